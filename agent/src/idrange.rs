//! The host uids and gids the agent's jobs run as, one pair per concurrent job slot (security
//! review M6).
//!
//! Every sandboxed job used to run as host uid 65534 (`nobody`), the same for every job and for
//! every daemon that runs as `nobody`: any of them could read a job's credential files or
//! rewrite a running job's plan. Now each slot gets its own ids from a subordinate range, which
//! comes from, in order:
//!
//! 1. `--id-range START:COUNT` (uids and gids `START..START+COUNT`);
//! 2. the agent user's entries in `/etc/subuid` and `/etc/subgid` (`name:start:count`, or
//!    `uid:start:count`; the first entry for the user counts);
//! 3. the built-in [`DEFAULT_START`]`:`[`DEFAULT_COUNT`], `0x7C000000`, in the range systemd
//!    leaves unused above its container ranges (`1879048192…2147483647`, docs/UIDS-GIDS.md) and
//!    below 2³¹ (which some kernel code treats as signed), far above the 16-bit ids of ordinary
//!    users and system services, and above the ranges `useradd` hands out in `/etc/subuid`
//!    (100000 up to `SUB_UID_MAX`, 600100000 by default). It also stays clear of systemd's
//!    "foreign" range at `0x7FFE0000`.
//!
//! The range must hold at least one id per slot (`--capacity`), may not contain 0, 65534
//! (`nobody`), 65535 or 4294967295 (both `(uid_t) -1` in some width); which block of it an agent
//! uses is [`crate::slots`]' choice. Only a root agent has a range: an agent that is not root
//! cannot map other ids, and its jobs run as its own uid.

use std::fmt;

/// The built-in range's first id: `0x7C000000`.
pub const DEFAULT_START: u32 = 0x7C00_0000;
/// The built-in range's size.
pub const DEFAULT_COUNT: u32 = 65_536;

/// Ids no job may have: root, `nobody`, and `(uid_t) -1` in 16 and 32 bits.
const RESERVED: [(u32, &str); 4] =
    [(0, "root"), (65_534, "nobody"), (65_535, "16-bit (uid_t) -1"), (u32::MAX, "(uid_t) -1")];

/// Where a range came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--id-range`.
    Flag,
    /// `/etc/subuid` and `/etc/subgid`, for this user.
    SubIds(String),
    /// The built-in default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag => f.write_str("--id-range"),
            Self::SubIds(user) => write!(f, "the /etc/subuid and /etc/subgid entries of `{user}`"),
            Self::Default => write!(f, "the built-in range {DEFAULT_START}:{DEFAULT_COUNT}"),
        }
    }
}

/// The uids and gids the agent gives its job slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRange {
    /// First uid.
    pub uid_start: u32,
    /// First gid.
    pub gid_start: u32,
    /// How many ids of each the range holds (the agent uses the first `--capacity`).
    pub count: u32,
    /// Where it came from.
    pub source: Source,
}

/// One slot's ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobIds {
    /// Host uid.
    pub uid: u32,
    /// Host gid.
    pub gid: u32,
}

/// Why the range cannot be used; the agent refuses to start with this message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdRangeError {
    /// `--id-range` is not `START:COUNT`.
    #[error(
        "--id-range `{0}`: expected START:COUNT, two decimal numbers (for example {DEFAULT_START}:{DEFAULT_COUNT})"
    )]
    BadFlag(String),
    /// A line of `/etc/subuid` or `/etc/subgid` is malformed.
    #[error("{file} line {line}: {why} (each line is `name:start:count`)")]
    BadLine {
        /// The file.
        file: &'static str,
        /// Its line number (from 1).
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The user has a subuid range but no subgid range (or the other way round).
    #[error(
        "{has} has an entry for `{user}` but {lacks} has none: add one (`{user}:START:COUNT`), or give \
         the agent --id-range START:COUNT"
    )]
    HalfEntry {
        /// The user.
        user: String,
        /// The file with an entry.
        has: &'static str,
        /// The file without.
        lacks: &'static str,
    },
    /// The range is smaller than the number of slots.
    #[error(
        "{origin} holds {count} ids, fewer than --capacity {needed}: each concurrent job needs a uid of its own; \
         give the agent a larger range or a lower --capacity"
    )]
    TooSmall {
        /// Where the range came from.
        origin: Source,
        /// Its size.
        count: u32,
        /// The capacity.
        needed: u32,
    },
    /// The range runs past the last id.
    #[error("{origin}: start {start} plus count {count} runs past the largest id")]
    Overflow {
        /// Where the range came from.
        origin: Source,
        /// Its start.
        start: u32,
        /// Its size.
        count: u32,
    },
    /// The range holds an id no job may have.
    #[error("{origin} includes {id} ({what}); choose a range that does not")]
    Reserved {
        /// Where the range came from.
        origin: Source,
        /// The id.
        id: u32,
        /// What it is.
        what: &'static str,
    },
}

/// `START:COUNT`.
pub fn parse_flag(text: &str) -> Result<(u32, u32), IdRangeError> {
    let bad = || IdRangeError::BadFlag(text.to_owned());
    let (start, count) = text.split_once(':').ok_or_else(bad)?;
    Ok((number(start).ok_or_else(bad)?, number(count).filter(|&n| n > 0).ok_or_else(bad)?))
}

/// Plain decimal digits only (no sign, no spaces), as shadow-utils writes them.
fn number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The first `start:count` of `user` (by name, or by `uid` as digits) in a `/etc/subuid`-style
/// file. Every line must be well formed, whoever it is for: a file the agent cannot read
/// exactly is not one to trust for isolation. Blank lines are skipped.
pub fn parse_subids(
    file: &'static str,
    content: &str,
    user: &str,
    uid: u32,
) -> Result<Option<(u32, u32)>, IdRangeError> {
    let mut found = None;
    for (index, line) in content.lines().enumerate() {
        let bad = |why: &str| IdRangeError::BadLine { file, line: index + 1, why: why.to_owned() };
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        let [name, start, count] = fields.as_slice() else {
            return Err(bad(&format!("{} fields, not 3", fields.len())));
        };
        if name.is_empty() {
            return Err(bad("empty user name"));
        }
        let start = number(start).ok_or_else(|| bad(&format!("start `{start}` is not a number")))?;
        let count = number(count)
            .filter(|&n| n > 0)
            .ok_or_else(|| bad(&format!("count `{count}` is not a positive number")))?;
        if u64::from(start) + u64::from(count) > u64::from(u32::MAX) + 1 {
            return Err(bad("start plus count runs past the largest id"));
        }
        if found.is_none() && (*name == user || number(name) == Some(uid)) {
            found = Some((start, count));
        }
    }
    Ok(found)
}

/// The range for an agent of `capacity` slots running as `user` (`uid`), from `flag`, else
/// the contents of `/etc/subuid` and `/etc/subgid` (`None` when a file is missing), else the
/// default.
pub fn resolve(
    flag: Option<(u32, u32)>,
    subuid: Option<&str>,
    subgid: Option<&str>,
    user: &str,
    uid: u32,
    capacity: u32,
) -> Result<IdRange, IdRangeError> {
    let range = match flag {
        Some((start, count)) => IdRange { uid_start: start, gid_start: start, count, source: Source::Flag },
        None => {
            let uids = subuid.map(|c| parse_subids("/etc/subuid", c, user, uid)).transpose()?.flatten();
            let gids = subgid.map(|c| parse_subids("/etc/subgid", c, user, uid)).transpose()?.flatten();
            match (uids, gids) {
                (Some((uid_start, uid_count)), Some((gid_start, gid_count))) => IdRange {
                    uid_start,
                    gid_start,
                    count: uid_count.min(gid_count),
                    source: Source::SubIds(user.to_owned()),
                },
                (Some(_), None) => {
                    return Err(IdRangeError::HalfEntry {
                        user: user.to_owned(),
                        has: "/etc/subuid",
                        lacks: "/etc/subgid",
                    });
                }
                (None, Some(_)) => {
                    return Err(IdRangeError::HalfEntry {
                        user: user.to_owned(),
                        has: "/etc/subgid",
                        lacks: "/etc/subuid",
                    });
                }
                (None, None) => IdRange {
                    uid_start: DEFAULT_START,
                    gid_start: DEFAULT_START,
                    count: DEFAULT_COUNT,
                    source: Source::Default,
                },
            }
        }
    };
    range.check(capacity)?;
    Ok(range)
}

impl IdRange {
    /// The range fits the ids' type, holds no reserved id, and has `capacity` ids.
    fn check(&self, capacity: u32) -> Result<(), IdRangeError> {
        for start in [self.uid_start, self.gid_start] {
            if u64::from(start) + u64::from(self.count) > u64::from(u32::MAX) + 1 {
                return Err(IdRangeError::Overflow { origin: self.source.clone(), start, count: self.count });
            }
            let end = u64::from(start) + u64::from(self.count);
            if let Some((id, what)) = RESERVED.iter().find(|(id, _)| (u64::from(start)..end).contains(&u64::from(*id)))
            {
                return Err(IdRangeError::Reserved { origin: self.source.clone(), id: *id, what });
            }
        }
        if self.count < capacity {
            return Err(IdRangeError::TooSmall { origin: self.source.clone(), count: self.count, needed: capacity });
        }
        Ok(())
    }

    /// Slot `index`'s ids (`index` < the capacity the range was checked for).
    pub fn slot(&self, index: u32) -> JobIds {
        JobIds { uid: self.uid_start.saturating_add(index), gid: self.gid_start.saturating_add(index) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_start_colon_count() {
        assert_eq!(parse_flag("200000:16"), Ok((200_000, 16)));
        for bad in [
            "",
            "200000",
            "200000:",
            ":16",
            "200000:0",
            "-1:16",
            "200000:16:1",
            " 200000:16",
            "0x10:16",
            "99999999999:1",
        ] {
            assert_eq!(parse_flag(bad), Err(IdRangeError::BadFlag(bad.to_owned())), "{bad}");
        }
    }

    #[test]
    fn subid_files_are_parsed_strictly() {
        let file = "alice:100000:65536\n\nroot:165536:65536\nroot:300000:10\n";
        assert_eq!(parse_subids("/etc/subuid", file, "root", 0), Ok(Some((165_536, 65_536))), "first entry counts");
        assert_eq!(parse_subids("/etc/subuid", "0:500000:100\n", "root", 0), Ok(Some((500_000, 100))), "by uid");
        assert_eq!(parse_subids("/etc/subuid", file, "bob", 1001), Ok(None));
        let cases = [
            ("root:100000\n", 1, "2 fields, not 3"),
            ("alice:1:1\nroot:100000:65536:x\n", 2, "4 fields, not 3"),
            (":100000:65536\n", 1, "empty user name"),
            ("root:1e5:65536\n", 1, "start `1e5` is not a number"),
            ("root:100000:0\n", 1, "count `0` is not a positive number"),
            ("root:100000: 5\n", 1, "count ` 5` is not a positive number"),
            ("root:4294967295:2\n", 1, "start plus count runs past the largest id"),
            ("# a comment\n", 1, "1 fields, not 3"),
        ];
        for (content, line, why) in cases {
            let error = parse_subids("/etc/subuid", content, "root", 0).expect_err(content);
            assert_eq!(error, IdRangeError::BadLine { file: "/etc/subuid", line, why: why.to_owned() }, "{content}");
            assert!(error.to_string().starts_with(&format!("/etc/subuid line {line}: {why}")), "{error}");
        }
    }

    #[test]
    fn the_range_comes_from_the_flag_then_the_files_then_the_default() {
        let files = (Some("root:100000:65536\n"), Some("root:200000:65536\n"));
        let flag = resolve(Some((300_000, 8)), files.0, files.1, "root", 0, 4).expect("flag");
        assert_eq!((flag.uid_start, flag.gid_start, flag.count, flag.source), (300_000, 300_000, 8, Source::Flag));
        let subids = resolve(None, files.0, files.1, "root", 0, 4).expect("files");
        assert_eq!((subids.uid_start, subids.gid_start), (100_000, 200_000));
        assert_eq!(subids.slot(3), JobIds { uid: 100_003, gid: 200_003 });
        let default = resolve(None, None, Some("alice:1:1\n"), "root", 0, 16).expect("default");
        assert_eq!((default.uid_start, default.count, default.source), (DEFAULT_START, DEFAULT_COUNT, Source::Default));
        assert!(default.uid_start > 1_879_048_191 && default.uid_start + default.count < 0x7FFE_0000);
    }

    #[test]
    fn unusable_ranges_are_refused_clearly() {
        let error = resolve(Some((300_000, 2)), None, None, "root", 0, 4).expect_err("too small");
        assert_eq!(
            error.to_string(),
            "--id-range holds 2 ids, fewer than --capacity 4: each concurrent job needs a uid of its own; \
             give the agent a larger range or a lower --capacity"
        );
        let error =
            resolve(None, Some("root:100000:2\n"), Some("root:100000:65536\n"), "root", 0, 4).expect_err("small");
        assert!(
            error.to_string().starts_with("the /etc/subuid and /etc/subgid entries of `root` holds 2 ids"),
            "{error}"
        );
        let error = resolve(Some((65_530, 16)), None, None, "root", 0, 1).expect_err("nobody");
        assert_eq!(error.to_string(), "--id-range includes 65534 (nobody); choose a range that does not");
        let error = resolve(Some((0, 16)), None, None, "root", 0, 1).expect_err("root");
        assert!(matches!(error, IdRangeError::Reserved { id: 0, .. }), "{error}");
        let error = resolve(Some((u32::MAX - 1, 16)), None, None, "root", 0, 1).expect_err("overflow");
        assert!(matches!(error, IdRangeError::Overflow { .. }), "{error}");
        let error = resolve(None, Some("root:100000:65536\n"), None, "root", 0, 1).expect_err("half");
        assert_eq!(
            error.to_string(),
            "/etc/subuid has an entry for `root` but /etc/subgid has none: add one (`root:START:COUNT`), \
             or give the agent --id-range START:COUNT"
        );
        let error = resolve(None, Some("root:100000\n"), None, "root", 0, 1).expect_err("bad file");
        assert!(error.to_string().starts_with("/etc/subuid line 1: 2 fields, not 3"), "{error}");
    }
}
