//! The data directory and the SQLite files in it: private to the broker's user (DESIGN.md §8.11).
//!
//! Keys and plans in the database are sealed and tokens hashed, but the rest (the audit log, who
//! ran and approved what, the stacks) is nobody else's business either, and a file others can read
//! today is a file whose next secret they read tomorrow. So:
//! - the data directory is created 0700; an existing one that group or others can reach is
//!   tightened to 0700, with a warning naming its old mode (the directory is the broker's own, as
//!   the KEK file is the operator's: the KEK file is refused instead, because the broker never
//!   writes it); one owned by another user is refused, since its owner could open it up again;
//! - the database file is created 0600 before SQLite opens it, so its `-wal`, `-shm` and
//!   `-journal` files, which SQLite creates with the database file's mode, are 0600 as well;
//!   existing ones that are looser are tightened.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use super::StoreError;

/// The data directory's mode.
pub const DIR_MODE: u32 = 0o700;
/// The database files' mode.
pub const FILE_MODE: u32 = 0o600;
/// What SQLite keeps beside a database file.
const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Creates `dir` (and missing parents) 0700, or makes an existing one 0700; refuses a directory
/// another user owns.
pub fn private_dir(dir: &Path) -> Result<(), StoreError> {
    let failed = |source| StoreError::DataDir { path: dir.display().to_string(), source };
    std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(failed)?;
    let metadata = std::fs::metadata(dir).map_err(failed)?;
    let uid = nix::unistd::geteuid().as_raw();
    if metadata.uid() != uid {
        return Err(StoreError::DataDirOwner { path: dir.display().to_string(), owner: metadata.uid(), uid });
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode != DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)).map_err(failed)?;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %dir.display(), old_mode = %format!("{mode:o}"), "the data directory was open to other users; it is now 0700");
        }
    }
    Ok(())
}

/// Makes the SQLite database at `path` private before SQLite opens it: its directory (see
/// [`private_dir`]), the file created 0600 if it is missing, and the file and its companions
/// tightened to 0600 if they are looser.
pub fn private_database(path: &Path) -> Result<(), StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_dir(dir)?;
    }
    let failed = |source| StoreError::DataDir { path: path.display().to_string(), source };
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(FILE_MODE).open(path) {
        Ok(_) => {}
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {}
        Err(error) => return Err(failed(error)),
    }
    for suffix in std::iter::once("").chain(COMPANIONS) {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        match std::fs::symlink_metadata(file) {
            Ok(metadata) if metadata.is_file() && metadata.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(FILE_MODE)).map_err(failed)?;
            }
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => return Err(failed(error)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0)
    }

    #[test]
    fn a_new_data_dir_and_database_are_private() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let db = root.path().join("a/b/keyward.db");
        private_database(&db)?;
        assert_eq!(mode(&root.path().join("a/b")), DIR_MODE);
        assert_eq!(mode(&root.path().join("a")), DIR_MODE, "parents it creates too");
        assert_eq!(mode(&db), FILE_MODE);
        assert_eq!(std::fs::metadata(&db)?.len(), 0, "an empty file is an empty SQLite database");
        Ok(())
    }

    #[test]
    fn looser_existing_modes_are_tightened() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("data");
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        let db = dir.join("keyward.db");
        for file in [db.clone(), dir.join("keyward.db-wal"), dir.join("keyward.db-shm")] {
            std::fs::write(&file, b"")?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
        }
        private_database(&db)?;
        assert_eq!(mode(&dir), DIR_MODE);
        for file in [db.clone(), dir.join("keyward.db-wal"), dir.join("keyward.db-shm")] {
            assert_eq!(mode(&file), FILE_MODE, "{}", file.display());
        }
        assert!(!dir.join("keyward.db-journal").exists(), "a missing companion is not created");
        Ok(())
    }

    #[test]
    fn a_data_dir_another_user_owns_is_refused_untouched() -> Result<(), Box<dyn std::error::Error>> {
        let root = tempfile::tempdir()?;
        let theirs = root.path().join("theirs");
        std::fs::create_dir(&theirs)?;
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755))?;
        let nobody = nix::unistd::Uid::from_raw(65534);
        let dir = if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&theirs, Some(nobody), None)?;
            theirs.clone()
        } else {
            // Not root: a directory root owns (and that nobody else may chmod).
            std::path::PathBuf::from("/usr")
        };
        let before = mode(&dir);
        let error = private_dir(&dir).err().ok_or("a foreign data dir must be refused")?;
        assert!(matches!(error, StoreError::DataDirOwner { .. }), "{error}");
        assert!(error.to_string().contains("is owned by uid"), "{error}");
        assert_eq!(mode(&dir), before, "nothing was changed");
        Ok(())
    }
}
