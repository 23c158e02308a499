//! Host filesystem operations of the volume plugins: emptyDir directories and tmpfs mounts, the
//! plugins' `ready` markers, hostPath type checks, fsGroup ownership, and the unmount / removal of
//! a pod's directory.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::error::{SetUpError, go_path_error};

/// The mode of an emptyDir directory (kubelet's `perm`).
pub const EMPTY_DIR_MODE: u32 = 0o777;
/// kubelet's `rwMask`, `roMask` and `execMask` of `SetVolumeOwnership`.
const RW_MASK: u32 = 0o660;
const RO_MASK: u32 = 0o440;
const EXEC_MASK: u32 = 0o110;
const SETGID: u32 = 0o2000;

/// Creates `dir` (and parents) and makes it mode 0777, as kubelet's emptyDir `setupDir`.
pub fn setup_dir(dir: &Path) -> Result<(), SetUpError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(EMPTY_DIR_MODE)
        .create(dir)
        .map_err(|e| SetUpError::io("mkdir", dir, &e))?;
    let meta = fs::symlink_metadata(dir).map_err(|e| SetUpError::io("lstat", dir, &e))?;
    if meta.permissions().mode() & 0o777 != EMPTY_DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(EMPTY_DIR_MODE))
            .map_err(|e| SetUpError::io("chmod", dir, &e))?;
    }
    Ok(())
}

/// Whether `dir` is the root of a tmpfs mount (a tmpfs with another device than its parent).
pub fn is_tmpfs_mount(dir: &Path) -> bool {
    let Ok(stat) = nix::sys::statfs::statfs(dir) else {
        return false;
    };
    if stat.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        return false;
    }
    let (Ok(meta), Some(parent)) = (fs::metadata(dir), dir.parent()) else {
        return false;
    };
    fs::metadata(parent).is_ok_and(|p| p.dev() != meta.dev())
}

/// Mounts a tmpfs at `dir` (`size=<bytes>` when given), as kubelet's emptyDir `setupTmpfs`.
pub fn mount_tmpfs(dir: &Path, size: Option<u64>) -> Result<(), SetUpError> {
    let options = size.map(|s| format!("size={s}"));
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::empty(),
        options.as_deref(),
    )
    .map_err(|e| {
        SetUpError::Io(format!(
            "mount failed: {e}\nMounting command: mount\nMounting arguments: -t tmpfs{} tmpfs {}",
            options.map(|o| format!(" -o {o}")).unwrap_or_default(),
            dir.display()
        ))
    })
}

/// Whether a plugin's metadata directory holds its `ready` marker.
pub fn is_ready(meta_dir: &Path) -> bool {
    fs::symlink_metadata(meta_dir.join("ready")).is_ok_and(|m| m.is_file())
}

/// Writes the `ready` marker (kubelet's `volumeutil.SetReady`).
pub fn set_ready(meta_dir: &Path) -> Result<(), SetUpError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(meta_dir)
        .map_err(|e| SetUpError::io("mkdir", meta_dir, &e))?;
    let ready = meta_dir.join("ready");
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&ready)
        .map(drop)
        .map_err(|e| SetUpError::io("open", &ready, &e))
}

/// kubelet's hostPath type check (`checkTypeInternal`), creating the path for the `…OrCreate`
/// types: a directory 0755 (with parents), or an empty file 0644 (the parent must exist).
pub fn check_host_path(path: &str, kind: &str) -> Result<(), SetUpError> {
    let p = Path::new(path);
    let meta = fs::metadata(p).ok();
    let not_a = |what: &'static str| SetUpError::HostPathType {
        path: path.to_string(),
        what,
    };
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" | "Directory" => match meta {
            None if kind == "DirectoryOrCreate" => make_dir(p),
            None => Err(SetUpError::HostPathMissing(path.to_string())),
            Some(m) if m.is_dir() => Ok(()),
            Some(_) => Err(not_a("directory")),
        },
        "FileOrCreate" | "File" => match meta {
            None if kind == "FileOrCreate" => make_file(p),
            None => Err(SetUpError::HostPathMissing(path.to_string())),
            Some(m) if m.is_file() => Ok(()),
            Some(_) => Err(not_a("file")),
        },
        "Socket" => meta
            .filter(|m| m.file_type().is_socket())
            .map(drop)
            .ok_or_else(|| not_a("socket file")),
        "CharDevice" => meta
            .filter(|m| m.file_type().is_char_device())
            .map(drop)
            .ok_or_else(|| not_a("character device")),
        "BlockDevice" => meta
            .filter(|m| m.file_type().is_block_device())
            .map(drop)
            .ok_or_else(|| not_a("block device")),
        other => Err(SetUpError::HostPathInvalidType(other.to_string())),
    }
}

fn make_dir(p: &Path) -> Result<(), SetUpError> {
    match fs::DirBuilder::new().recursive(true).mode(0o755).create(p) {
        Ok(()) => {
            // 0755 whatever the agent's umask.
            fs::set_permissions(p, fs::Permissions::from_mode(0o755))
                .map_err(|e| SetUpError::io("chmod", p, &e))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(SetUpError::io("mkdir", p, &e)),
    }
}

fn make_file(p: &Path) -> Result<(), SetUpError> {
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(p)
    {
        Ok(_) => fs::set_permissions(p, fs::Permissions::from_mode(0o644))
            .map_err(|e| SetUpError::io("chmod", p, &e)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(SetUpError::io("open", p, &e)),
    }
}

/// kubelet's `SetVolumeOwnership` with the `Always` policy: every entry under `dir` (symlinks not
/// followed) gets group `fs_group`; files and directories get `rw` (or, for read-only volumes,
/// `r`) for owner and group, directories also `x` and the setgid bit. Failures on single entries
/// are logged, as kubelet does; a directory that cannot be read is an error.
pub fn set_volume_ownership(dir: &Path, fs_group: u32, read_only: bool) -> Result<(), SetUpError> {
    change_permission(dir, fs_group, read_only)?;
    Ok(())
}

fn change_permission(path: &Path, gid: u32, read_only: bool) -> Result<(), SetUpError> {
    let meta = fs::symlink_metadata(path).map_err(|e| SetUpError::io("lstat", path, &e))?;
    if let Err(e) = std::os::unix::fs::lchown(path, None, Some(gid)) {
        tracing::warn!(path = %path.display(), error = %e, "lchown failed");
    }
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        return Ok(());
    }
    let mut mask = if read_only { RO_MASK } else { RW_MASK };
    if file_type.is_dir() {
        mask |= SETGID | EXEC_MASK;
    }
    let mode = (meta.permissions().mode() & 0o7777) | mask;
    if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
        tracing::warn!(path = %path.display(), error = %e, "chmod failed");
    }
    if file_type.is_dir() {
        let entries = fs::read_dir(path).map_err(|e| SetUpError::io("open", path, &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| SetUpError::io("readdirent", path, &e))?;
            change_permission(&entry.path(), gid, read_only)?;
        }
    }
    Ok(())
}

/// The mount points at or under `dir`, deepest first, from `/proc/self/mountinfo`.
pub fn mount_points_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mount_points_in(&text, dir))
}

fn mount_points_in(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let v = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts `path` (lazily when it is busy). Not being mounted is success.
pub fn unmount(path: &Path) -> Result<(), String> {
    match nix::mount::umount2(path, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => nix::mount::umount2(path, MntFlags::MNT_DETACH)
            .map_err(|e| format!("unmount {}: {e}", path.display())),
        Err(e) => Err(format!("unmount {}: {e}", path.display())),
    }
}

/// Removes `dir` recursively without ever crossing into another filesystem (a mount left under
/// it is an error, not something to empty), as kubelet's `RemoveDirsOneFilesystem`.
pub fn remove_one_filesystem(dir: &Path) -> Result<(), String> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(go_path_error("lstat", dir, &e)),
    };
    remove_on_device(dir, meta.dev())
}

fn remove_on_device(path: &Path, dev: u64) -> Result<(), String> {
    let meta = fs::symlink_metadata(path).map_err(|e| go_path_error("lstat", path, &e))?;
    if meta.dev() != dev {
        return Err(format!(
            "refusing to remove {}: it is on another filesystem (still mounted?)",
            path.display()
        ));
    }
    if !meta.file_type().is_dir() {
        return fs::remove_file(path).map_err(|e| go_path_error("unlink", path, &e));
    }
    for entry in fs::read_dir(path).map_err(|e| go_path_error("open", path, &e))? {
        let entry = entry.map_err(|e| go_path_error("readdirent", path, &e))?;
        remove_on_device(&entry.path(), dev)?;
    }
    fs::remove_dir(path).map_err(|e| go_path_error("rmdir", path, &e))
}

/// The host's memory (MemTotal) in bytes, for when the node's allocatable is unknown.
pub fn host_memory_bytes() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn host_path_types() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let file = d.join("file");
        fs::write(&file, "x").expect("write");
        let sock = d.join("sock");
        let _listener = UnixListener::bind(&sock).expect("bind");
        let missing = d.join("missing");

        // no type: nothing is checked
        assert!(check_host_path(&s(&missing), "").is_ok());
        assert!(check_host_path(&s(d), "Directory").is_ok());
        assert_eq!(
            check_host_path(&s(&file), "Directory")
                .expect_err("file")
                .to_string(),
            format!(
                "hostPath type check failed: {} is not a directory",
                s(&file)
            )
        );
        assert_eq!(
            check_host_path(&s(&missing), "Directory")
                .expect_err("missing")
                .to_string(),
            format!("hostPath type check failed: {} does not exist", s(&missing))
        );
        assert!(check_host_path(&s(&file), "File").is_ok());
        assert_eq!(
            check_host_path(&s(d), "File").expect_err("dir").to_string(),
            format!("hostPath type check failed: {} is not a file", s(d))
        );
        assert!(check_host_path(&s(&sock), "Socket").is_ok());
        assert_eq!(
            check_host_path(&s(&file), "Socket")
                .expect_err("not socket")
                .to_string(),
            format!(
                "hostPath type check failed: {} is not a socket file",
                s(&file)
            )
        );
        assert!(check_host_path("/dev/null", "CharDevice").is_ok());
        assert_eq!(
            check_host_path(&s(&file), "CharDevice")
                .expect_err("not char")
                .to_string(),
            format!(
                "hostPath type check failed: {} is not a character device",
                s(&file)
            )
        );
        assert_eq!(
            check_host_path("/dev/null", "BlockDevice")
                .expect_err("not block")
                .to_string(),
            "hostPath type check failed: /dev/null is not a block device"
        );
        assert_eq!(
            check_host_path(&s(d), "Fancy")
                .expect_err("bad")
                .to_string(),
            "Fancy is an invalid volume type"
        );

        // DirectoryOrCreate makes the directory and its parents, 0755
        let nested = d.join("a/b/c");
        check_host_path(&s(&nested), "DirectoryOrCreate").expect("create dir");
        let m = fs::metadata(&nested).expect("created");
        assert!(m.is_dir());
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        // an existing file is not a directory
        assert!(check_host_path(&s(&file), "DirectoryOrCreate").is_err());

        // FileOrCreate makes an empty 0644 file; the parent must exist
        let new_file = d.join("a/new");
        check_host_path(&s(&new_file), "FileOrCreate").expect("create file");
        let m = fs::metadata(&new_file).expect("created");
        assert!(m.is_file());
        assert_eq!(m.len(), 0);
        assert_eq!(m.permissions().mode() & 0o7777, 0o644);
        let orphan = d.join("nope/file");
        assert_eq!(
            check_host_path(&s(&orphan), "FileOrCreate")
                .expect_err("no parent")
                .to_string(),
            format!("open {}: no such file or directory", s(&orphan))
        );
        assert!(check_host_path(&s(d), "FileOrCreate").is_err());
    }

    #[test]
    fn ownership_sets_group_and_setgid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("vol");
        setup_dir(&d).expect("setup");
        fs::create_dir(d.join("sub")).expect("mkdir");
        fs::write(d.join("sub/f"), "x").expect("write");
        fs::set_permissions(d.join("sub/f"), fs::Permissions::from_mode(0o600)).expect("chmod");
        std::os::unix::fs::symlink("sub/f", d.join("link")).expect("symlink");
        set_volume_ownership(&d, 4321, false).expect("ownership");
        let m = fs::metadata(&d).expect("meta");
        assert_eq!(m.gid(), 4321);
        assert_eq!(m.permissions().mode() & 0o7777, 0o2777);
        let f = fs::metadata(d.join("sub/f")).expect("meta");
        assert_eq!(f.gid(), 4321);
        assert_eq!(f.permissions().mode() & 0o7777, 0o660);
        let sub = fs::metadata(d.join("sub")).expect("meta");
        assert_eq!(sub.permissions().mode() & 0o2000, 0o2000);
        assert_eq!(
            fs::symlink_metadata(d.join("link")).expect("meta").gid(),
            4321
        );
        // read-only volumes get r for the group only
        fs::set_permissions(d.join("sub/f"), fs::Permissions::from_mode(0o600)).expect("chmod");
        set_volume_ownership(&d, 4321, true).expect("ownership");
        let f = fs::metadata(d.join("sub/f")).expect("meta");
        assert_eq!(f.permissions().mode() & 0o7777, 0o640);
    }

    #[test]
    fn mountinfo_parsing() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache rw - tmpfs tmpfs rw
31 22 0:41 / /var/lib/kubelet/pods/u1/volumes/kubernetes.io~secret/with\\040space rw - tmpfs tmpfs rw
32 22 0:42 / /var/lib/kubelet/pods/u10/volumes/x rw - tmpfs tmpfs rw
33 30 0:43 / /var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache/inner rw - tmpfs tmpfs rw
";
        let points = mount_points_in(text, Path::new("/var/lib/kubelet/pods/u1"));
        assert_eq!(
            points,
            vec![
                PathBuf::from(
                    "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache/inner"
                ),
                PathBuf::from("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache"),
                PathBuf::from("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~secret/with space"),
            ]
        );
    }

    #[test]
    fn removal_stays_on_one_filesystem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("pod");
        fs::create_dir_all(d.join("a/b")).expect("mkdir");
        fs::write(d.join("a/b/f"), "x").expect("write");
        std::os::unix::fs::symlink("/etc", d.join("a/etc")).expect("symlink");
        remove_one_filesystem(&d).expect("remove");
        assert!(!d.exists());
        assert!(Path::new("/etc/hostname").exists() || Path::new("/etc").exists());
        remove_one_filesystem(&d).expect("idempotent");
    }
}
