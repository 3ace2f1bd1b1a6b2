//! Which stacks a change touches: those whose repository is the event's (compared normalised,
//! since GitHub names one repository by three URLs and a stack by whichever its author typed)
//! and that a changed file concerns, by the stack's trigger globs or, without any, by its path.

use crate::runs::Stack;
use crate::runs::triggers::trigger_set;

/// A stack a change touches, with the changed files that concern it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched<'a> {
    /// The stack.
    pub stack: &'a Stack,
    /// The changed files under its path or matching its triggers, in the order given.
    pub files: Vec<String>,
}

/// The stacks among `stacks` whose repository is one of `urls` (normalised) and that one of the
/// `changed` files concerns: a file under the stack's `path` (`""`: any), or, when the stack has
/// trigger globs, a file matching one of them instead.
pub fn touched<'a>(stacks: &'a [Stack], urls: &[&str], changed: &[String]) -> Vec<Touched<'a>> {
    let urls: Vec<String> = urls.iter().filter_map(|url| normalise_repository(url)).collect();
    stacks
        .iter()
        .filter(|stack| normalise_repository(&stack.spec.repository).is_some_and(|repo| urls.contains(&repo)))
        .filter_map(|stack| {
            let files: Vec<String> = if stack.spec.triggers.is_empty() {
                let path = stack.spec.path.trim_matches('/');
                changed.iter().filter(|file| under(path, file)).cloned().collect()
            } else {
                let set = trigger_set(&stack.spec.triggers)?;
                changed.iter().filter(|file| set.is_match(file.as_str())).cloned().collect()
            };
            (!files.is_empty()).then_some(Touched { stack, files })
        })
        .collect()
}

/// Whether `file` lies in the directory `path` (on `/` boundaries; `""` is the whole repository).
fn under(path: &str, file: &str) -> bool {
    let path = path.strip_prefix("./").unwrap_or(path);
    path.is_empty() || file.strip_prefix(path).is_some_and(|rest| rest.starts_with('/'))
}

/// One spelling per repository, to compare a stack's `repository` with an event's URLs:
/// `host/owner/name` for network URLs (`https://`, `http://`, `ssh://`, `git://` and scp-like
/// `git@host:owner/name`), without user, port, trailing `/` or `.git`, lowercased (GitHub's names
/// are case-insensitive); `file:///path` for local repositories, whose paths keep their case.
/// `None`: not a repository URL.
pub fn normalise_repository(url: &str) -> Option<String> {
    let url = url.trim();
    if url.is_empty() || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    if let Some(rest) = url.strip_prefix("file://") {
        // `file:///srv/repo.git` or `file://localhost/srv/repo.git`.
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if !path.starts_with('/') {
            return None;
        }
        let path = repository_path(path)?;
        return Some(format!("file:///{path}"));
    }
    let (authority, path) = match url.split_once("://") {
        Some((scheme, rest)) => {
            if !["https", "http", "ssh", "git", "git+ssh"].contains(&scheme.to_ascii_lowercase().as_str()) {
                return None;
            }
            rest.split_once('/').unwrap_or((rest, ""))
        }
        // scp-like: `[user@]host:path`, which has no `/` before the `:`.
        None => {
            let (authority, path) = url.split_once(':')?;
            if authority.contains('/') {
                return None;
            }
            (authority, path)
        }
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = match host.strip_prefix('[') {
        // An IPv6 literal, `[::1]:8080`.
        Some(v6) => v6.split_once(']').map(|(address, _)| address)?,
        None => host.split_once(':').map_or(host, |(name, _port)| name),
    };
    if host.is_empty() {
        return None;
    }
    let path = repository_path(path)?;
    Some(format!("{}/{}", host, path).to_ascii_lowercase())
}

/// A repository path without leading or trailing `/`, a trailing `.git`, or empty or `.`/`..`
/// segments (which would let two spellings of different repositories compare equal).
fn repository_path(path: &str) -> Option<String> {
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path).trim_end_matches('/');
    if path.is_empty() || path.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return None;
    }
    Some(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::StackSpec;

    #[test]
    fn one_repository_under_every_url_normalises_to_one_string() {
        let urls = [
            "https://github.com/Octo/Repo.git",
            "https://github.com/octo/repo",
            "https://github.com/octo/repo/",
            "git@github.com:octo/repo.git",
            "ssh://git@github.com/octo/repo.git",
            "ssh://git@github.com:22/octo/repo",
            "http://GitHub.com/octo/repo.git/",
            "https://x-access-token:secret@github.com:443/octo/repo.git",
            "git://github.com/octo/repo.git",
        ];
        for url in urls {
            assert_eq!(normalise_repository(url).as_deref(), Some("github.com/octo/repo"), "{url}");
        }
        assert_eq!(normalise_repository("http://127.0.0.1:8080/git/infra.git").as_deref(), Some("127.0.0.1/git/infra"));
        assert_eq!(normalise_repository("http://[::1]:8080/infra").as_deref(), Some("::1/infra"));
    }

    #[test]
    fn local_repositories_keep_their_path() {
        assert_eq!(normalise_repository("file:///tmp/Work/infra.git").as_deref(), Some("file:///tmp/Work/infra"));
        assert_eq!(normalise_repository("file://localhost/tmp/Work/infra/").as_deref(), Some("file:///tmp/Work/infra"));
        assert_ne!(normalise_repository("file:///tmp/work/infra"), normalise_repository("file:///tmp/Work/infra"));
    }

    #[test]
    fn different_repositories_and_non_urls_do_not_compare_equal() {
        let repo = normalise_repository("https://github.com/octo/repo");
        for other in [
            "https://github.com/octo/repo2",
            "https://github.com/octo/repo/sub",
            "https://gitlab.com/octo/repo",
            "https://github.com/octo/x/../repo",
        ] {
            assert_ne!(normalise_repository(other), repo, "{other}");
        }
        for bad in
            ["", "github.com/octo/repo", "ftp://github.com/o/r", "https://github.com/", "file://relative/x", "a b:c"]
        {
            assert_eq!(normalise_repository(bad), None, "{bad}");
        }
    }

    fn stack(name: &str, repository: &str, path: &str, triggers: &[&str]) -> Stack {
        let spec: StackSpec = serde_json::from_value(serde_json::json!({
            "name": name, "repository": repository, "path": path, "triggers": triggers,
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        Stack::new(spec, 1, "admin".into())
    }

    fn names(touched: &[Touched<'_>]) -> Vec<(String, Vec<String>)> {
        touched.iter().map(|t| (t.stack.spec.name.clone(), t.files.clone())).collect()
    }

    #[test]
    fn stacks_are_touched_by_files_under_their_path_or_matching_their_triggers() {
        let stacks = [
            stack("root", "https://github.com/octo/infra.git", "", &[]),
            stack("net", "git@github.com:octo/infra.git", "stacks/net", &[]),
            stack("net-prefix", "https://github.com/octo/infra", "stacks/ne", &[]),
            stack("modules", "https://github.com/octo/infra", "stacks/app", &["modules/**/*.tf", "stacks/app/*.tf"]),
            stack("elsewhere", "https://github.com/octo/other.git", "", &[]),
        ];
        let urls = ["https://github.com/octo/infra.git", "https://github.com/octo/infra"];
        let changed: Vec<String> =
            ["stacks/net/main.tf", "modules/vpc/sub/x.tf", "stacks/app/deep/y.tf", "stacks/app/z.tf", "README.md"]
                .map(str::to_owned)
                .into();
        let touched = touched(&stacks, &urls, &changed);
        assert_eq!(
            names(&touched),
            [
                ("root".to_owned(), changed.clone()),
                ("net".to_owned(), vec!["stacks/net/main.tf".to_owned()]),
                // `*` does not cross `/`, `**` does; the path no longer counts once there are triggers.
                ("modules".to_owned(), vec!["modules/vpc/sub/x.tf".to_owned(), "stacks/app/z.tf".to_owned()]),
            ]
        );
        assert!(super::touched(&stacks, &urls, &["docs/x.md".to_owned()]).iter().all(|t| t.stack.spec.name == "root"));
        assert!(super::touched(&stacks, &["https://github.com/someone/else"], &changed).is_empty());
    }
}
