//! File tools: list, read, write, delete. Paths arrive already resolved and allowed by
//! [`crate::policy::Policy::check`]; these functions only do the IO and describe the result.
//!
//! `read` returns UTF-8 text as text. A file that is not UTF-8 (an image, a PDF) is returned as
//! a [`BlobOutput`] with a one-line summary, so it reaches the phone intact instead of as
//! mangled text. Either way a file larger than `max_bytes` is an error: the limit bounds the
//! memory a task can take and what goes into a document, and a truncated binary is useless.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::action::{BlobOutput, ToolOutput};
use crate::tools::ToolError;

/// At most this many entries are listed; a listing of a huge folder says how many were left
/// out rather than filling the task's result.
const MAX_LS_ENTRIES: usize = 1000;

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ToolError + '_ {
    move |source| ToolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Lists a folder: one entry per line, sorted by name, folders with a trailing `/`, files with
/// their size in bytes, symlinks with their target. Listing a file shows that one entry.
pub fn ls(path: &Path) -> Result<ToolOutput, ToolError> {
    let meta = fs::metadata(path).map_err(io_error(path))?;
    if !meta.is_dir() {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        return Ok(ToolOutput::text(format!("{name}  {} bytes", meta.len())));
    }
    let mut entries = Vec::new();
    for entry in fs::read_dir(path).map_err(io_error(path))? {
        let entry = entry.map_err(io_error(path))?;
        entries.push(entry);
    }
    entries.sort_by_key(|entry| entry.file_name());
    if entries.is_empty() {
        return Ok(ToolOutput::text("(empty folder)"));
    }
    let total = entries.len();
    let mut lines: Vec<String> = entries
        .iter()
        .take(MAX_LS_ENTRIES)
        .map(|entry| describe_entry(&entry.path(), &entry.file_name().to_string_lossy()))
        .collect();
    if total > MAX_LS_ENTRIES {
        lines.push(format!("... and {} more", total - MAX_LS_ENTRIES));
    }
    Ok(ToolOutput::text(lines.join("\n")))
}

/// One line of a listing. An entry that vanishes or cannot be inspected mid-listing is still
/// shown, with the reason, rather than failing the whole listing.
fn describe_entry(path: &Path, name: &str) -> String {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => match fs::read_link(path) {
            Ok(target) => format!("{name} -> {}", target.display()),
            Err(_) => format!("{name} -> ?"),
        },
        Ok(meta) if meta.is_dir() => format!("{name}/"),
        Ok(meta) => format!("{name}  {} bytes", meta.len()),
        Err(err) => format!("{name}  ({err})"),
    }
}

/// Reads a file of at most `max_bytes`: UTF-8 text as text, anything else as a blob (see the
/// module docs).
pub fn read(path: &Path, max_bytes: usize) -> Result<ToolOutput, ToolError> {
    // Check the kind before opening: opening a FIFO for reading blocks until a writer comes.
    let kind = fs::metadata(path).map_err(io_error(path))?;
    if kind.is_dir() {
        return Err(ToolError::Failed(format!(
            "{} is a folder; use ls to list it",
            path.display()
        )));
    }
    if !kind.is_file() {
        return Err(ToolError::Failed(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let file = fs::File::open(path).map_err(io_error(path))?;
    let meta = file.metadata().map_err(io_error(path))?;
    let too_large = |size: String| {
        ToolError::Failed(format!(
            "{} is {size} bytes, more than the {max_bytes}-byte limit for reading",
            path.display()
        ))
    };
    if meta.len() > max_bytes as u64 {
        return Err(too_large(meta.len().to_string()));
    }
    // The file may grow between the size check and the read: read one byte past the limit to
    // notice, rather than trusting the metadata.
    let mut bytes = Vec::new();
    file.take(max_bytes as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(path))?;
    if bytes.len() > max_bytes {
        return Err(too_large(format!("more than {max_bytes}")));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(ToolOutput::text(text)),
        Err(err) => {
            let bytes = err.into_bytes();
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|| "file".to_owned());
            let mime = mime_for(path).to_owned();
            let summary = format!(
                "{} is not text: {} bytes of {mime}, attached as {name}",
                path.display(),
                bytes.len()
            );
            Ok(ToolOutput {
                text: summary,
                blobs: vec![BlobOutput { name, mime, bytes }],
            })
        }
    }
}

/// A media type from the file extension, for the blob of a binary file; the phone uses it to
/// decide how to show the file.
fn mime_for(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .map(|ext| ext.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// Writes a text file, creating missing parent folders. The new content goes to a temporary
/// file in the same folder that is then renamed over the target, so a reader never sees a
/// half-written file and a failure leaves the old content in place. An existing file keeps its
/// permissions (an executable script stays executable).
pub fn write(path: &Path, text: &str) -> Result<ToolOutput, ToolError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(ToolError::Failed(format!(
            "{} is not a file path",
            path.display()
        )));
    };
    fs::create_dir_all(parent).map_err(io_error(parent))?;
    let existing = match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(ToolError::Failed(format!(
                "{} is a folder; a file cannot be written over it",
                path.display()
            )));
        }
        Ok(meta) => Some(meta.permissions()),
        Err(_) => None,
    };

    let (tmp_path, mut tmp) = create_temp(parent, &name.to_string_lossy())?;
    let result = (|| {
        tmp.write_all(text.as_bytes())?;
        if let Some(permissions) = existing {
            tmp.set_permissions(permissions)?;
        }
        tmp.sync_all()?;
        drop(tmp);
        fs::rename(&tmp_path, path)
    })();
    if let Err(source) = result {
        // Best effort: the error that matters is the one being returned.
        let _ = fs::remove_file(&tmp_path);
        return Err(ToolError::Io {
            path: path.display().to_string(),
            source,
        });
    }
    Ok(ToolOutput::text(format!(
        "wrote {} bytes to {}",
        text.len(),
        path.display()
    )))
}

/// Creates a new, uniquely named hidden file next to the target. `create_new` makes it fail
/// rather than reuse (or follow a symlink at) a name that exists, so a few attempts with fresh
/// random suffixes are enough.
fn create_temp(dir: &Path, name: &str) -> Result<(std::path::PathBuf, fs::File), ToolError> {
    let mut last_error = None;
    for _ in 0..8 {
        let suffix: u64 = rand::random();
        let tmp_path = dir.join(format!(".{name}.errand-{suffix:016x}.tmp"));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
        {
            Ok(file) => return Ok((tmp_path, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last_error = Some(err),
            Err(source) => {
                return Err(ToolError::Io {
                    path: tmp_path.display().to_string(),
                    source,
                });
            }
        }
    }
    Err(ToolError::Io {
        path: dir.display().to_string(),
        source: last_error.unwrap_or_else(|| io::Error::other("could not create a temporary file")),
    })
}

/// Deletes a file, a symlink (not its target) or an empty folder. Folders with content are
/// refused: deleting a tree is one approval for an unbounded loss.
pub fn rm(path: &Path) -> Result<ToolOutput, ToolError> {
    let meta = fs::symlink_metadata(path).map_err(io_error(path))?;
    if meta.is_dir() {
        fs::remove_dir(path).map_err(|source| {
            if source.kind() == io::ErrorKind::DirectoryNotEmpty {
                ToolError::Failed(format!(
                    "{} is a folder that is not empty; only files and empty folders can be deleted",
                    path.display()
                ))
            } else {
                io_error(path)(source)
            }
        })?;
        Ok(ToolOutput::text(format!(
            "deleted empty folder {}",
            path.display()
        )))
    } else {
        fs::remove_file(path).map_err(io_error(path))?;
        Ok(ToolOutput::text(format!("deleted {}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    #[test]
    fn ls_sorts_and_marks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("b.txt"), "hello").unwrap();
        fs::create_dir(dir.join("a")).unwrap();
        fs::write(dir.join("c"), "").unwrap();
        symlink("b.txt", dir.join("d")).unwrap();
        let out = ls(dir).unwrap();
        assert_eq!(out.text, "a/\nb.txt  5 bytes\nc  0 bytes\nd -> b.txt");
        assert!(out.blobs.is_empty());
        assert_eq!(ls(&dir.join("a")).unwrap().text, "(empty folder)");
        assert_eq!(ls(&dir.join("b.txt")).unwrap().text, "b.txt  5 bytes");
        let err = ls(&dir.join("missing")).unwrap_err();
        assert!(matches!(err, ToolError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn ls_caps_huge_folders() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..MAX_LS_ENTRIES + 5 {
            fs::write(tmp.path().join(format!("f{i:05}")), "").unwrap();
        }
        let text = ls(tmp.path()).unwrap().text;
        assert_eq!(text.lines().count(), MAX_LS_ENTRIES + 1);
        assert!(
            text.ends_with("... and 5 more"),
            "{}",
            &text[text.len() - 40..]
        );
    }

    #[test]
    fn read_text_binary_and_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let text_file = tmp.path().join("t.txt");
        fs::write(&text_file, "héllo\n").unwrap();
        assert_eq!(read(&text_file, 100).unwrap(), ToolOutput::text("héllo\n"));

        let png = tmp.path().join("p.png");
        fs::write(&png, [0x89, b'P', b'N', b'G', 0xff, 0x00]).unwrap();
        let out = read(&png, 100).unwrap();
        assert_eq!(
            out.blobs,
            vec![BlobOutput {
                name: "p.png".into(),
                mime: "image/png".into(),
                bytes: vec![0x89, b'P', b'N', b'G', 0xff, 0x00],
            }]
        );
        assert!(
            out.text.contains("not text: 6 bytes of image/png"),
            "{}",
            out.text
        );

        let err = read(&text_file, 3).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("is 7 bytes, more than the 3-byte limit for reading"),
            "{err}"
        );
        assert!(read(&text_file, 7).is_ok());
        let err = read(tmp.path(), 100).unwrap_err();
        assert!(err.to_string().contains("is a folder"), "{err}");
        let fifo = tmp.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = read(&fifo, 100).unwrap_err();
        assert!(err.to_string().ends_with("is not a regular file"), "{err}");
        let err = read(&tmp.path().join("nope"), 100).unwrap_err();
        assert!(matches!(err, ToolError::Io { .. }), "{err:?}");
    }

    #[test]
    fn write_creates_parents_and_replaces_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/c.txt");
        let out = write(&path, "one").unwrap();
        assert_eq!(out.text, format!("wrote 3 bytes to {}", path.display()));
        assert_eq!(fs::read_to_string(&path).unwrap(), "one");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o750)).unwrap();
        write(&path, "two\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(tmp.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["c.txt"]);

        let err = write(tmp.path().join("a").as_path(), "x").unwrap_err();
        assert!(err.to_string().contains("is a folder"), "{err}");
        // A parent that is a file cannot hold a new file.
        let err = write(&path.join("under-a-file"), "x").unwrap_err();
        assert!(matches!(err, ToolError::Io { .. }), "{err:?}");
    }

    #[test]
    fn rm_files_links_and_empty_folders_only() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, "x").unwrap();
        assert_eq!(
            rm(&file).unwrap().text,
            format!("deleted {}", file.display())
        );
        assert!(!file.exists());

        let target = tmp.path().join("target");
        fs::write(&target, "x").unwrap();
        symlink(&target, tmp.path().join("link")).unwrap();
        rm(&tmp.path().join("link")).unwrap();
        assert!(target.exists());

        let full = tmp.path().join("full");
        fs::create_dir(&full).unwrap();
        fs::write(full.join("x"), "x").unwrap();
        let err = rm(&full).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        assert!(full.join("x").exists());
        fs::remove_file(full.join("x")).unwrap();
        assert!(rm(&full).unwrap().text.starts_with("deleted empty folder"));
        assert!(!full.exists());

        let err = rm(&tmp.path().join("missing")).unwrap_err();
        assert!(matches!(err, ToolError::Io { .. }), "{err:?}");
    }
}
