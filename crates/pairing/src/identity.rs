//! The device's long-term identity: an ed25519 secret key stored in a file.
//!
//! The key is the device's iroh endpoint key, and its public half is the device id that every
//! membership certificate names. Losing it means the device has to be paired again; leaking it
//! lets someone else act as this device. So the file is created owner-only, written atomically
//! (a crash never leaves a half-written key behind), never silently replaced, and refused when
//! other users could read it, the way ssh refuses a private key with loose permissions.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use iroh::SecretKey;

/// Length of a stored key: the raw ed25519 secret, nothing else.
const KEY_LEN: usize = 32;

/// Why the device key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The file exists but could not be opened or read.
    #[error("cannot read device key {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// Something other than a regular file sits where the key should be.
    #[error("device key path {path} is not a regular file: move it aside")]
    NotAFile { path: PathBuf },
    /// The file does not hold exactly one key; it is left untouched.
    #[error(
        "device key {path} is {len} bytes, expected 32: the file is damaged or not an errand key; \
         move it aside to create a new identity (the device must then be paired again)"
    )]
    WrongLength { path: PathBuf, len: u64 },
    /// Group or other users may access the file.
    #[error(
        "device key {path} is accessible by other users (mode {mode:03o}): \
         run `chmod 600 {path}` if it has not been copied, otherwise revoke this device"
    )]
    Permissions { path: PathBuf, mode: u32 },
    /// The directory for a new key could not be created.
    #[error("cannot create directory {path} for the device key: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    /// A new key could not be written.
    #[error("cannot write device key {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Loads the device key from `path`, or creates a new one there if the file does not exist.
///
/// An existing file must be a regular file of exactly 32 bytes that only its owner may access;
/// anything else is an error and the file is never modified, because overwriting a key the user
/// still needs would silently turn this device into a stranger to its space.
///
/// A new key is written to a temporary file in the same directory (mode 0600 from the moment it
/// exists, so there is no window in which it is readable by others), flushed to disk, and renamed
/// into place, so readers see either no key or the whole key. Missing parent directories are
/// created with mode 0700.
///
/// Only one process should create the identity of a given data directory at a time (the store
/// holds an exclusive lock on that directory anyway); two racing creators would each rename
/// their own key into place and the later one would win.
pub fn load_or_create(path: &Path) -> Result<SecretKey, IdentityError> {
    match File::open(path) {
        Ok(file) => load(path, file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create(path),
        Err(source) => Err(IdentityError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Checks and reads an already opened key file. Metadata comes from the open handle, so the
/// checks apply to the very file that is read.
fn load(path: &Path, mut file: File) -> Result<SecretKey, IdentityError> {
    let read_err = |source| IdentityError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(IdentityError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() != KEY_LEN as u64 {
        return Err(IdentityError::WrongLength {
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    // Read one byte more than expected so a file that grew after the metadata check is caught.
    let mut buf = Vec::with_capacity(KEY_LEN + 1);
    (&mut file)
        .take(KEY_LEN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    let bytes: [u8; KEY_LEN] =
        buf.as_slice()
            .try_into()
            .map_err(|_| IdentityError::WrongLength {
                path: path.to_owned(),
                len: buf.len() as u64,
            })?;
    Ok(SecretKey::from_bytes(&bytes))
}

/// Generates a key and stores it atomically at `path`.
fn create(path: &Path) -> Result<SecretKey, IdentityError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| IdentityError::CreateDir {
            path: dir.clone(),
            source,
        })?;

    let key = SecretKey::generate();
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".to_owned());
    let suffix: u64 = rand::random();
    let tmp = dir.join(format!(".{file_name}.tmp-{suffix:016x}"));

    let result = write_new(&tmp, &key.to_bytes())
        .and_then(|()| fs::rename(&tmp, path))
        .and_then(|()| File::open(&dir)?.sync_all());
    if let Err(source) = result {
        // Best effort: do not leave a stray copy of a key that was never put into use.
        let _ = fs::remove_file(&tmp);
        return Err(IdentityError::Write {
            path: path.to_owned(),
            source,
        });
    }
    Ok(key)
}

/// Writes `bytes` to a file that must not exist yet, owner-only, and flushes it to disk.
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // The umask can only remove bits, but set the mode explicitly in case the file system
    // ignored the requested one.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_eq!(a.public(), b.public());
    }

    #[test]
    fn new_key_is_owner_only_and_dirs_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key");
        load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for d in ["a", "a/b"] {
            let mode = fs::metadata(dir.path().join(d)).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o700, "{d}");
        }
        // No temporary file is left behind.
        let entries: Vec<_> = fs::read_dir(dir.path().join("a/b")).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn corrupt_key_is_an_error_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        for content in [
            &b""[..],
            &[7u8; 31][..],
            &[7u8; 33][..],
            b"not a key at all",
        ] {
            fs::write(&path, content).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = load_or_create(&path).unwrap_err();
            assert!(
                matches!(err, IdentityError::WrongLength { len, .. } if len == content.len() as u64),
                "{err}"
            );
            assert!(err.to_string().contains("key"), "{err}");
            assert_eq!(fs::read(&path).unwrap(), content);
        }
    }

    #[test]
    fn readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let key = load_or_create(&path).unwrap();
        for mode in [0o640, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = load_or_create(&path).unwrap_err();
            assert!(matches!(err, IdentityError::Permissions { .. }), "{err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load_or_create(&path).unwrap().to_bytes(), key.to_bytes());
    }

    #[test]
    fn directory_in_place_of_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        DirBuilder::new().mode(0o700).create(&path).unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(matches!(err, IdentityError::NotAFile { .. }), "{err}");
    }
}
