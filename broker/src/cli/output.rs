//! Standard output that a closed pipe ends quietly.
//!
//! Rust ignores SIGPIPE, so `println!` panics when the reader has gone away
//! (`keyward audit trace … | head`). Commands print through [`outln!`] and [`out!`] instead: a
//! closed stdout becomes [`StdoutClosed`], which `main` turns into exit status 0 with nothing on
//! stderr. The reader asked for no more; that is not a failure of the command (ripgrep and fd
//! answer the same way, and `set -o pipefail` scripts keep working with `| head`).

use std::fmt;
use std::io::{self, Write as _};

/// The reader of standard output went away (EPIPE); `main` exits quietly with status 0.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub(super) struct StdoutClosed;

/// Writes `args` (and a newline when `newline`) to stdout, then flushes.
pub(super) fn write(args: fmt::Arguments<'_>, newline: bool) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| if newline { stdout.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| stdout.flush());
    written.map_err(stdout_error)
}

/// The error of a failed write to stdout: [`StdoutClosed`] when the reader went away, for
/// commands that stream through their own writer (`audit export`).
pub(super) fn stdout_error(error: io::Error) -> anyhow::Error {
    if error.kind() == io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(error).context("cannot write to standard output")
    }
}

/// Whether `error` only says that stdout's reader went away.
pub(super) fn is_stdout_closed(error: &anyhow::Error) -> bool {
    error.downcast_ref::<StdoutClosed>().is_some()
}

/// `println!` that returns `anyhow::Result<()>` instead of panicking on a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!($($arg)*), true)
    };
}

/// `print!` that returns `anyhow::Result<()>` instead of panicking on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!($($arg)*), false)
    };
}

pub(super) use {out, outln};
