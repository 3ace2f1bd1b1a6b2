//! The one-way channel from the sandbox's init and the program-to-be back to the jailer.
//!
//! Why it exists: the init runs inside the namespaces and cannot write the status file or
//! print to the job's stderr without mixing with the program's output; the jailer needs to know
//! which layers were applied, whether setup failed (and where), and how the program ended
//! (the init, as PID 1 of its namespace, cannot mirror a death by signal in its own exit status).
//!
//! Line protocol on a close-on-exec pipe, so the program itself never holds the write end:
//! `L <layer>`, `W <skipped layer: why>`, `E <exit code> <layer: why>`, `X <code>`, `S <signal>`.
//! The jailer reads it only after the init is dead, bounded to [`MAX_REPORT`] bytes, and
//! treats anything malformed as absent.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

/// Most bytes read from the channel.
pub(crate) const MAX_REPORT: u64 = 64 * 1024;

/// Writer end, used by the init and the program before `execve`.
#[derive(Debug)]
pub(crate) struct Reporter(std::fs::File);

impl Reporter {
    pub(crate) fn new(fd: OwnedFd) -> Reporter {
        Reporter(std::fs::File::from(fd))
    }

    fn line(&mut self, tag: char, text: &str) {
        // One write per line (< PIPE_BUF) so lines from the init and the program never interleave.
        let line = format!("{tag} {}\n", text.replace('\n', " "));
        let _ = self.0.write_all(line.as_bytes());
    }

    pub(crate) fn layer(&mut self, text: &str) {
        self.line('L', text);
    }

    pub(crate) fn skipped(&mut self, text: &str) {
        self.line('W', text);
    }

    pub(crate) fn failed(&mut self, code: i32, text: &str) {
        self.line('E', &format!("{code} {text}"));
    }

    pub(crate) fn exited(&mut self, code: i32) {
        self.line('X', &code.to_string());
    }

    pub(crate) fn signaled(&mut self, signal: i32) {
        self.line('S', &signal.to_string());
    }
}

/// What the jailer learned from the channel.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) layers: Vec<String>,
    pub(crate) skipped: Vec<String>,
    /// The first setup failure: exit code and `"layer: why"`.
    pub(crate) failure: Option<(i32, String)>,
    pub(crate) exit_code: Option<i32>,
    pub(crate) signal: Option<i32>,
}

/// Read the whole channel (all writers must be gone) and parse it.
pub(crate) fn receive(fd: OwnedFd) -> Received {
    let mut bytes = Vec::new();
    let _ = std::fs::File::from(fd).take(MAX_REPORT).read_to_end(&mut bytes);
    parse(&String::from_utf8_lossy(&bytes))
}

fn parse(text: &str) -> Received {
    let mut received = Received::default();
    for line in text.lines() {
        let Some((tag, rest)) = line.split_once(' ') else { continue };
        match tag {
            "L" => received.layers.push(rest.to_owned()),
            "W" => received.skipped.push(rest.to_owned()),
            "E" if received.failure.is_none() => {
                if let Some((code, why)) = rest.split_once(' ').and_then(|(c, w)| Some((c.parse().ok()?, w))) {
                    received.failure = Some((code, why.to_owned()));
                }
            }
            "X" => received.exit_code = rest.parse().ok(),
            "S" => received.signal = rest.parse().ok(),
            _ => {}
        }
    }
    received
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_keeps_the_first_failure() {
        let r = parse("L a\nW b: no\nE 125 rootfs: bad\nE 127 exec: later\nX 3\ngarbage\nS x\n");
        assert_eq!(r.layers, vec!["a"]);
        assert_eq!(r.skipped, vec!["b: no"]);
        assert_eq!(r.failure, Some((125, "rootfs: bad".to_owned())));
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.signal, None);
    }
}
