//! Output files of `likerate export --out` and `likerate report --out`.
//!
//! Guarantees: the file is created exclusively (an existing file, or a symlink in its place, is
//! an error and is left alone), readable by its owner only (mode 0600, it holds user text), and
//! appears complete or not at all: the data goes to a temporary file in the same directory
//! (created with `O_EXCL`, never through a symlink), which is synced and renamed to the final
//! name without replacing anything; on any failure, or if the process stops first, the
//! temporary file is removed.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// An output file being written.
pub struct OutFile {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl OutFile {
    /// Starts writing `path`, which must not exist yet.
    pub fn create(path: &Path) -> io::Result<OutFile> {
        // Checked first for a clear message; the rename below refuses a file that appears
        // meanwhile anyway.
        if path.symlink_metadata().is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists; choose a new file name", path.display()),
            ));
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        // tempfile creates with O_EXCL and mode 0600.
        let tmp = tempfile::Builder::new()
            .prefix(".likerate-")
            .suffix(".partial")
            .tempfile_in(dir)?;
        Ok(OutFile {
            tmp,
            path: path.to_owned(),
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Syncs the data and gives the file its final name (never replacing one).
    pub fn commit(self) -> io::Result<()> {
        self.tmp.as_file().sync_all()?;
        self.tmp
            .persist_noclobber(&self.path)
            .map(drop)
            .map_err(|e| e.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn complete_private_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut out = OutFile::create(&path).unwrap();
        out.file().write_all(b"data").unwrap();
        assert!(!path.exists(), "visible before it is complete");
        out.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Exists: refused, untouched.
        assert!(OutFile::create(&path).is_err());
        // A symlink in its place: refused, its target untouched.
        let target = dir.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(OutFile::create(&link).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        // Dropped without commit (a failure): nothing is left behind.
        let other = dir.path().join("other");
        let mut out = OutFile::create(&other).unwrap();
        out.file().write_all(b"half").unwrap();
        drop(out);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 3, "out.jsonl, victim, link only");
    }
}
