//! The file operations of a rotation (blocking: run them off the async threads): reading a log
//! directory, removing, gzipping and renaming its files.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

use super::rotation::{COMPRESS_SUFFIX, Plan, TMP_SUFFIX};

/// A failed file operation, with the file it was about.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct FileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FileError {
    fn at(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self {
            action,
            path,
            source,
        }
    }

    /// Whether the file was not there.
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == io::ErrorKind::NotFound
    }
}

/// The size of the live log file and the names of the other entries of its directory.
pub fn inspect(live: &Path) -> Result<(u64, Vec<String>), FileError> {
    let size = std::fs::metadata(live)
        .map_err(FileError::at("reading the size of", live))?
        .len();
    let dir = parent(live);
    let mut siblings = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(FileError::at("listing", dir))? {
        let entry = entry.map_err(FileError::at("listing", dir))?;
        if let Some(name) = entry.file_name().to_str() {
            siblings.push(name.to_owned());
        }
    }
    Ok((size, siblings))
}

/// Removes and compresses what `plan` says, in the directory of `live`; stops at the first
/// failure. A file already gone counts as removed.
pub fn prepare(live: &Path, plan: &Plan) -> Result<(), FileError> {
    let dir = parent(live);
    for name in &plan.remove {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(FileError::at("removing", &path)(e)),
        }
    }
    for name in &plan.compress {
        compress(&dir.join(name))?;
    }
    Ok(())
}

/// Gzips `path` into `<path>.gz` through `<path>.tmp`, then removes `path`. The compressed file
/// gets the original's permissions; the temporary file is removed on failure.
pub fn compress(path: &Path) -> Result<(), FileError> {
    let tmp = with_suffix(path, TMP_SUFFIX);
    let result = write_compressed(path, &tmp);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    let compressed = with_suffix(path, COMPRESS_SUFFIX);
    if let Err(e) = std::fs::rename(&tmp, &compressed) {
        let _ = std::fs::remove_file(&tmp);
        return Err(FileError::at("renaming the compressed log to", &compressed)(e));
    }
    std::fs::remove_file(path).map_err(FileError::at("removing the compressed", path))
}

fn write_compressed(path: &Path, tmp: &Path) -> Result<(), FileError> {
    let source = File::open(path).map_err(FileError::at("opening", path))?;
    let mode = source
        .metadata()
        .map_err(FileError::at("reading the mode of", path))?
        .permissions()
        .mode();
    let target = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(tmp)
        .map_err(FileError::at("creating", tmp))?;
    let mut encoder = GzEncoder::new(BufWriter::new(target), Compression::default());
    io::copy(&mut BufReader::new(source), &mut encoder)
        .map_err(FileError::at("compressing into", tmp))?;
    encoder
        .finish()
        .and_then(|mut out| out.flush())
        .map_err(FileError::at("compressing into", tmp))
}

/// Renames `from` to `to`.
pub fn rename(from: &Path, to: &Path) -> Result<(), FileError> {
    std::fs::rename(from, to).map_err(FileError::at("renaming", from))
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Removes a removed container's log: the live file and its rotated copies (`<live>.*`), as
/// kubelet's `containerLogManager.Clean`. Files already gone are not an error. Returns how many
/// files were removed.
pub fn remove_all(live: &Path) -> Result<usize, FileError> {
    let dir = parent(live);
    let Some(name) = live.file_name().and_then(|n| n.to_str()) else {
        return Ok(0);
    };
    let prefix = format!("{name}.");
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(FileError::at("listing", dir)(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(FileError::at("listing", dir))?;
        let matches = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n == name || n.starts_with(&prefix));
        if !matches {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(FileError::at("removing", &path)(e)),
        }
    }
    Ok(removed)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn removing_a_containers_log_takes_its_rotated_copies_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "1.log",
            "1.log.20261204-101010.gz",
            "1.log.20261204-101011",
            "1.log.tmp",
            "10.log",
            "2.log",
        ] {
            std::fs::write(dir.path().join(name), "x").expect("write");
        }
        let removed = super::remove_all(&dir.path().join("1.log")).expect("remove");
        assert_eq!(removed, 4);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .collect();
        left.sort();
        assert_eq!(left, ["10.log", "2.log"]);
        assert_eq!(
            super::remove_all(&dir.path().join("gone/1.log")).expect("gone"),
            0
        );
    }

    use std::io::Read;

    use super::*;

    #[test]
    fn compress_replaces_the_file_with_its_gzip() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("0.log.20261204-090507");
        let content = "2026-12-04T09:05:07Z stdout F hello\n".repeat(1000);
        std::fs::write(&path, &content)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))?;
        compress(&path)?;
        assert!(!path.exists());
        assert!(!with_suffix(&path, TMP_SUFFIX).exists());
        let gz = with_suffix(&path, COMPRESS_SUFFIX);
        assert_eq!(std::fs::metadata(&gz)?.permissions().mode() & 0o777, 0o640);
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(&gz)?).read_to_string(&mut text)?;
        assert_eq!(text, content);
        assert!(std::fs::metadata(&gz)?.len() < 1000);
        Ok(())
    }

    #[test]
    fn a_failed_compression_leaves_the_original() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("0.log.x");
        let err = compress(&missing).expect_err("nothing to compress");
        assert!(err.is_not_found(), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path())?.count(),
            0,
            "no temporary file left"
        );
        Ok(())
    }

    #[test]
    fn prepare_removes_then_compresses() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let live = dir.path().join("0.log");
        for name in ["0.log", "0.log.1.tmp", "0.log.2"] {
            std::fs::write(dir.path().join(name), name)?;
        }
        let plan = Plan {
            remove: vec!["0.log.1.tmp".into(), "0.log.gone".into()],
            compress: vec!["0.log.2".into()],
            rotate_to: "0.log.3".into(),
        };
        prepare(&live, &plan)?;
        let (size, mut names) = inspect(&live)?;
        names.sort();
        assert_eq!(size, 5);
        assert_eq!(names, vec!["0.log", "0.log.2.gz"]);
        Ok(())
    }
}
