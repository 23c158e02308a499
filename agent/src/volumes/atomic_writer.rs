//! kubelet's atomic writer (`pkg/volume/util/atomic_writer.go`): projects a set of files into a
//! volume directory so that a consumer never sees a half-updated volume.
//!
//! The real files live in a hidden timestamped directory (`..2024_01_02_15_04_05.123456`); the
//! `..data` symlink points at the current one, and every user-visible top-level name is a symlink
//! through it (`key -> ..data/key`). An update writes a complete new timestamped directory, points a
//! temporary symlink `..data_tmp` at it and renames that over `..data` (atomic), then prunes names
//! that disappeared and the previous timestamped directory. Names starting with `..` are reserved.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::SetUpError;

/// The data-directory symlink.
pub const DATA_DIR_NAME: &str = "..data";
/// The symlink renamed over [`DATA_DIR_NAME`].
pub const NEW_DATA_DIR_NAME: &str = "..data_tmp";

const MAX_FILE_NAME_LENGTH: usize = 255;
const MAX_PATH_LENGTH: usize = 4096;

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    /// Permission bits (`0o644`); only the low nine bits are used, as Go's `os.FileMode` does.
    pub mode: u32,
}

impl FileProjection {
    pub fn new(data: impl Into<Vec<u8>>, mode: i32) -> Self {
        Self {
            data: data.into(),
            mode: u32::try_from(mode).unwrap_or(0) & 0o777,
        }
    }
}

/// Relative path → contents.
pub type Payload = BTreeMap<String, FileProjection>;

/// What [`AtomicWriter::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A new data directory was swapped in.
    Written,
    /// The volume already held this payload.
    Unchanged,
}

/// Writes payloads into one target directory (which must exist). Not synchronized: one writer per
/// directory at a time (the pod's worker).
#[derive(Debug, Clone)]
pub struct AtomicWriter {
    target_dir: PathBuf,
}

impl AtomicWriter {
    pub fn new(target_dir: impl Into<PathBuf>) -> Self {
        Self {
            target_dir: target_dir.into(),
        }
    }

    /// Projects `payload` into the target directory. `set_perms` runs after the new data is
    /// written and before it becomes visible (kubelet applies the pod's fsGroup there).
    pub fn write(
        &self,
        payload: &Payload,
        set_perms: Option<&dyn Fn() -> Result<(), SetUpError>>,
    ) -> Result<WriteOutcome, SetUpError> {
        // (1) validate and clean the payload
        let payload = validate_payload(payload)?;

        // (2) the current timestamped directory
        let data_dir = self.target_dir.join(DATA_DIR_NAME);
        let old_ts_dir = match fs::read_link(&data_dir) {
            Ok(target) => Some(target),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(SetUpError::io("readlink", &data_dir, &e)),
        };

        let mut to_remove = BTreeSet::new();
        if let Some(old) = &old_ts_dir {
            let old_path = self.target_dir.join(old);
            // (3) paths of the old version that the new payload no longer has
            to_remove = paths_to_remove(&payload, &old_path)?;
            // (4) is there anything to do?
            if !should_write_payload(&payload, &old_path)? && to_remove.is_empty() {
                self.create_user_visible_files(&payload)?;
                return Ok(WriteOutcome::Unchanged);
            }
        }

        // (5) a new timestamped directory
        let ts_dir = self.new_timestamp_dir()?;
        let result = self.swap_in(&payload, &ts_dir, set_perms);
        if let Err(e) = result {
            let _ = fs::remove_file(self.target_dir.join(NEW_DATA_DIR_NAME));
            let _ = fs::remove_dir_all(&ts_dir);
            return Err(e);
        }

        // (10) user-visible symlinks for new top-level names
        self.create_user_visible_files(&payload)?;

        // (11) names that disappeared
        self.remove_user_visible_paths(&to_remove)?;

        // (12) the previous data, and leftovers of interrupted writes
        if let Some(old) = &old_ts_dir {
            let old_path = self.target_dir.join(old);
            if let Err(e) = fs::remove_dir_all(&old_path)
                && e.kind() != io::ErrorKind::NotFound
            {
                return Err(SetUpError::io("unlinkat", &old_path, &e));
            }
        }
        self.remove_stale_timestamp_dirs(&ts_dir);
        Ok(WriteOutcome::Written)
    }

    /// Steps (6)–(9): write the payload, apply permissions, swap `..data`.
    fn swap_in(
        &self,
        payload: &Payload,
        ts_dir: &Path,
        set_perms: Option<&dyn Fn() -> Result<(), SetUpError>>,
    ) -> Result<(), SetUpError> {
        // (6)
        write_payload_to_dir(payload, ts_dir)?;
        // (7)
        if let Some(set_perms) = set_perms {
            set_perms()?;
        }
        // (8)
        let ts_name = ts_dir
            .file_name()
            .map(PathBuf::from)
            .ok_or_else(|| SetUpError::Io(format!("bad data directory {}", ts_dir.display())))?;
        let new_data_dir = self.target_dir.join(NEW_DATA_DIR_NAME);
        match fs::remove_file(&new_data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(SetUpError::io("remove", &new_data_dir, &e)),
        }
        std::os::unix::fs::symlink(&ts_name, &new_data_dir)
            .map_err(|e| SetUpError::io("symlink", &new_data_dir, &e))?;
        // (9) the atomic swap
        let data_dir = self.target_dir.join(DATA_DIR_NAME);
        fs::rename(&new_data_dir, &data_dir).map_err(|e| {
            SetUpError::Io(format!(
                "rename {} {}: {}",
                new_data_dir.display(),
                data_dir.display(),
                super::error::go_errno_text(&e)
            ))
        })
    }

    fn new_timestamp_dir(&self) -> Result<PathBuf, SetUpError> {
        let prefix = jiff::Timestamp::now()
            .strftime("..%Y_%m_%d_%H_%M_%S.")
            .to_string();
        let mut last_err = None;
        for _ in 0..100 {
            let dir = self
                .target_dir
                .join(format!("{prefix}{}", super::random_u32()));
            match fs::create_dir(&dir) {
                Ok(()) => {
                    // 0755 regardless of the umask, so group and others can traverse it.
                    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                        .map_err(|e| SetUpError::io("chmod", &dir, &e))?;
                    return Ok(dir);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => return Err(SetUpError::io("mkdir", &dir, &e)),
            }
        }
        let e = last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
        Err(SetUpError::io("mkdir", &self.target_dir, &e))
    }

    /// `bar -> ..data/bar` for every top-level name of the payload that has no entry yet.
    fn create_user_visible_files(&self, payload: &Payload) -> Result<(), SetUpError> {
        for path in payload.keys() {
            let top = path.split('/').next().unwrap_or(path);
            let visible = self.target_dir.join(top);
            match fs::symlink_metadata(&visible) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let target = Path::new(DATA_DIR_NAME).join(top);
                    std::os::unix::fs::symlink(&target, &visible)
                        .map_err(|e| SetUpError::io("symlink", &visible, &e))?;
                }
                Err(e) => return Err(SetUpError::io("lstat", &visible, &e)),
            }
        }
        Ok(())
    }

    /// Removes top-level user-visible names (paths without `/`) of `paths`.
    fn remove_user_visible_paths(&self, paths: &BTreeSet<String>) -> Result<(), SetUpError> {
        let mut last = None;
        for p in paths.iter().filter(|p| !p.contains('/')) {
            let visible = self.target_dir.join(p);
            if let Err(e) = fs::remove_file(&visible)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %visible.display(), error = %e, "cannot prune old user-visible path");
                last = Some(SetUpError::io("remove", &visible, &e));
            }
        }
        last.map_or(Ok(()), Err)
    }

    /// Timestamped directories of interrupted writes (neither current nor referenced).
    fn remove_stale_timestamp_dirs(&self, current: &Path) {
        let Ok(entries) = fs::read_dir(&self.target_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let path = entry.path();
            if name.starts_with("..")
                && name != DATA_DIR_NAME
                && name != NEW_DATA_DIR_NAME
                && path != current
                && entry.file_type().is_ok_and(|t| t.is_dir())
                && let Err(e) = fs::remove_dir_all(&path)
            {
                tracing::debug!(path = %path.display(), error = %e, "cannot remove stale data directory");
            }
        }
    }
}

/// Validates every path and cleans it (`a/./b//c` → `a/b/c`).
pub fn validate_payload(payload: &Payload) -> Result<Payload, SetUpError> {
    let mut clean = Payload::new();
    for (path, file) in payload {
        validate_path(path)?;
        let cleaned = clean_path(path);
        if cleaned.is_empty() {
            return Err(SetUpError::InvalidPath(format!(
                "invalid path: must not be empty: {path:?}"
            )));
        }
        clean.insert(cleaned, file.clone());
    }
    Ok(clean)
}

/// kubelet's `validatePath`: relative, no `..` element, not starting with `..`, bounded lengths.
pub fn validate_path(path: &str) -> Result<(), SetUpError> {
    let invalid = |m: String| Err(SetUpError::InvalidPath(m));
    if path.is_empty() {
        return invalid(format!("invalid path: must not be empty: {path:?}"));
    }
    if path.starts_with('/') {
        return invalid(format!("invalid path: must be relative path: {path}"));
    }
    if path.len() > MAX_PATH_LENGTH {
        return invalid(format!(
            "invalid path: must be less than or equal to {MAX_PATH_LENGTH} characters"
        ));
    }
    let items: Vec<&str> = path.split('/').collect();
    for item in &items {
        if *item == ".." {
            return invalid(format!("invalid path: must not contain '..': {path}"));
        }
        if item.len() > MAX_FILE_NAME_LENGTH {
            return invalid(format!(
                "invalid path: filenames must be less than or equal to {MAX_FILE_NAME_LENGTH} characters"
            ));
        }
    }
    if items.first().is_some_and(|first| first.starts_with("..")) {
        return invalid(format!("invalid path: must not start with '..': {path}"));
    }
    Ok(())
}

/// Go's `filepath.Clean` for relative paths without `..`.
fn clean_path(path: &str) -> String {
    path.split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

fn should_write_payload(payload: &Payload, old_ts_dir: &Path) -> Result<bool, SetUpError> {
    for (path, file) in payload {
        let on_disk = old_ts_dir.join(path);
        match fs::read(&on_disk) {
            Ok(content) if content == file.data => {}
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(SetUpError::io("open", &on_disk, &e)),
        }
    }
    Ok(false)
}

/// Relative paths (files and directories) of the old version that neither are in the new payload
/// nor are parent directories of its files.
fn paths_to_remove(payload: &Payload, old_ts_dir: &Path) -> Result<BTreeSet<String>, SetUpError> {
    let mut existing = BTreeSet::new();
    match walk(old_ts_dir, "", &mut existing) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(SetUpError::io("lstat", old_ts_dir, &e)),
    }
    let mut wanted = BTreeSet::new();
    for path in payload.keys() {
        let mut sub = path.as_str();
        loop {
            wanted.insert(sub.to_string());
            match sub.rfind('/') {
                Some(i) => sub = &sub[..i],
                None => break,
            }
        }
    }
    Ok(existing.difference(&wanted).cloned().collect())
}

fn walk(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), &rel, out)?;
        }
        out.insert(rel);
    }
    Ok(())
}

fn write_payload_to_dir(payload: &Payload, dir: &Path) -> Result<(), SetUpError> {
    for (path, file) in payload {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .create(parent)
                .map_err(|e| SetUpError::io("mkdir", parent, &e))?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(file.mode)
            .open(&full)
            .map_err(|e| SetUpError::io("open", &full, &e))?;
        f.write_all(&file.data)
            .map_err(|e| SetUpError::io("write", &full, &e))?;
        // The umask applied at creation: set the exact mode.
        fs::set_permissions(&full, fs::Permissions::from_mode(file.mode))
            .map_err(|e| SetUpError::io("chmod", &full, &e))?;
    }
    Ok(())
}

/// Whether `dir` holds a projected volume (its `..data` symlink exists).
pub fn has_data(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(DATA_DIR_NAME)).is_ok_and(|m| m.file_type().is_symlink())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn payload(entries: &[(&str, &str, u32)]) -> Payload {
        entries
            .iter()
            .map(|(k, v, m)| {
                (
                    k.to_string(),
                    FileProjection {
                        data: v.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).expect("read")
    }

    #[test]
    fn first_write_lays_out_data_dir_and_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = AtomicWriter::new(dir.path());
        let p = payload(&[
            ("a", "1", 0o644),
            ("nested/b", "2", 0o600),
            ("exec", "#!/bin/sh", 0o755),
        ]);
        assert_eq!(w.write(&p, None).expect("write"), WriteOutcome::Written);

        let data = fs::read_link(dir.path().join("..data")).expect("..data");
        let data_name = data.to_string_lossy().into_owned();
        assert!(data_name.starts_with("..20"), "{data_name}");
        assert_eq!(mode_of(&dir.path().join(&data)), 0o755);
        assert_eq!(
            fs::read_link(dir.path().join("a")).expect("a"),
            Path::new("..data/a")
        );
        assert_eq!(
            fs::read_link(dir.path().join("nested")).expect("nested"),
            Path::new("..data/nested")
        );
        assert_eq!(read(&dir.path().join("a")), "1");
        assert_eq!(read(&dir.path().join("nested/b")), "2");
        // modes are exact whatever the umask
        assert_eq!(mode_of(&dir.path().join("a")), 0o644);
        assert_eq!(mode_of(&dir.path().join("nested/b")), 0o600);
        assert_eq!(mode_of(&dir.path().join("exec")), 0o755);
        assert!(!dir.path().join("..data_tmp").exists());
        assert!(has_data(dir.path()));
    }

    #[test]
    fn unchanged_payload_is_not_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = AtomicWriter::new(dir.path());
        let p = payload(&[("a", "1", 0o644)]);
        w.write(&p, None).expect("write");
        let before = fs::read_link(dir.path().join("..data")).expect("link");
        assert_eq!(w.write(&p, None).expect("write"), WriteOutcome::Unchanged);
        assert_eq!(
            fs::read_link(dir.path().join("..data")).expect("link"),
            before
        );
    }

    #[test]
    fn update_swaps_atomically_and_old_files_stay_readable_until_the_rename() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = AtomicWriter::new(dir.path());
        w.write(
            &payload(&[("key", "v1", 0o644), ("gone", "x", 0o644)]),
            None,
        )
        .expect("write v1");
        let old_ts = fs::read_link(dir.path().join("..data")).expect("link");

        let visible = dir.path().join("key");
        let checked = Cell::new(false);
        let check = || -> Result<(), SetUpError> {
            // new data is fully written in a second timestamped dir, but readers still see v1
            assert_eq!(read(&visible), "v1");
            assert_eq!(read(&dir.path().join("gone")), "x");
            assert_eq!(
                fs::read_link(dir.path().join("..data")).expect("link"),
                old_ts
            );
            let new_dirs: Vec<_> = fs::read_dir(dir.path())
                .expect("readdir")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("..20") && Path::new(n) != old_ts)
                .collect();
            assert_eq!(new_dirs.len(), 1);
            assert_eq!(read(&dir.path().join(&new_dirs[0]).join("key")), "v2");
            checked.set(true);
            Ok(())
        };
        let outcome = w
            .write(&payload(&[("key", "v2", 0o640)]), Some(&check))
            .expect("write v2");
        assert_eq!(outcome, WriteOutcome::Written);
        assert!(checked.get());
        assert_eq!(read(&visible), "v2");
        assert_eq!(mode_of(&visible), 0o640);
        // removed keys disappear, and so does the old data directory
        assert!(fs::symlink_metadata(dir.path().join("gone")).is_err());
        assert!(!dir.path().join(&old_ts).exists());
        let names: BTreeSet<String> = fs::read_dir(dir.path())
            .expect("readdir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}"); // ..data, ..<ts>, key
    }

    #[test]
    fn removing_a_key_alone_triggers_a_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = AtomicWriter::new(dir.path());
        w.write(
            &payload(&[("a", "1", 0o644), ("d/b", "2", 0o644), ("d/c", "3", 0o644)]),
            None,
        )
        .expect("write");
        let outcome = w
            .write(&payload(&[("d/b", "2", 0o644)]), None)
            .expect("write");
        assert_eq!(outcome, WriteOutcome::Written);
        assert!(fs::symlink_metadata(dir.path().join("a")).is_err());
        assert!(!dir.path().join("d/c").exists());
        assert_eq!(read(&dir.path().join("d/b")), "2");
    }

    #[test]
    fn failed_set_perms_leaves_the_old_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = AtomicWriter::new(dir.path());
        w.write(&payload(&[("a", "1", 0o644)]), None)
            .expect("write");
        let fail = || Err(SetUpError::Io("boom".into()));
        let err = w
            .write(&payload(&[("a", "2", 0o644)]), Some(&fail))
            .expect_err("must fail");
        assert_eq!(err.to_string(), "boom");
        assert_eq!(read(&dir.path().join("a")), "1");
        let count = fs::read_dir(dir.path())
            .expect("readdir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..20"))
            .count();
        assert_eq!(count, 1);
    }

    #[test]
    fn empty_payload_still_creates_data_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        AtomicWriter::new(dir.path())
            .write(&Payload::new(), None)
            .expect("write");
        assert!(has_data(dir.path()));
    }

    #[test]
    fn invalid_paths_are_refused() {
        for (path, message) in [
            ("", "invalid path: must not be empty: \"\""),
            ("/abs", "invalid path: must be relative path: /abs"),
            ("a/../b", "invalid path: must not contain '..': a/../b"),
            ("..", "invalid path: must not contain '..': .."),
            ("..data", "invalid path: must not start with '..': ..data"),
        ] {
            let err = validate_path(path).expect_err(path);
            assert_eq!(err.to_string(), message, "{path}");
        }
        assert!(validate_path("a..b/c").is_ok());
        let p = payload(&[("a/./b//c", "x", 0o644)]);
        let clean = validate_payload(&p).expect("clean");
        assert!(clean.contains_key("a/b/c"));
    }
}
