//! Reading the files a user names (manifests, and through them workflow templates; run
//! reports): the one bounded reader, and the manifest's size and encoding checks before any
//! parsing.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::diagnostic::{Problem, SourceFile};

/// Manifests larger than this are refused before parsing (8 MiB; real chapters are a few KiB).
pub const MAX_MANIFEST_BYTES: usize = 8 * 1024 * 1024;

/// Open `path` if it is a regular file (a symbolic link to one is fine): never a device, a
/// FIFO, a socket or a directory, which could block, never end (`/dev/zero`) or be something
/// else than the file the user meant. Checked before opening (a FIFO blocks in `open`) and
/// again on the opened file. Returns the file and its size.
fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    let not_regular = |meta: &std::fs::Metadata| {
        (!meta.is_file()).then(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("it is not a regular file (it is {})", file_kind(meta)),
            )
        })
    };
    let meta = std::fs::metadata(path)?;
    if let Some(err) = not_regular(&meta) {
        return Err(err);
    }
    let file = File::open(path)?;
    let opened = file.metadata()?;
    if let Some(err) = not_regular(&opened) {
        return Err(err);
    }
    Ok((file, opened.len()))
}

/// What a file that is not a regular file is, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    "not a plain file"
}

/// The first `limit + 1` bytes at most of the regular file `path` (see [`open_regular`]):
/// one byte past the limit, so the caller sees that a file is over it without reading it all,
/// even when its size is not known in advance (`/proc` files say 0) or it grows meanwhile.
pub fn read_prefix(path: &Path, limit: usize) -> io::Result<Vec<u8>> {
    let (file, size) = open_regular(path)?;
    read_at_most(file, size, limit)
}

fn read_at_most(file: File, size: u64, limit: usize) -> io::Result<Vec<u8>> {
    let cap = limit as u64 + 1;
    let mut bytes = Vec::with_capacity(size.min(cap) as usize);
    file.take(cap).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// All of the regular file `path`, refused (`FileTooLarge`) if it is over `limit` bytes: the
/// one way every user-named input file is read.
pub fn read_bounded(path: &Path, limit: usize) -> io::Result<Vec<u8>> {
    let too_large = || {
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("it is larger than the {} limit", size_text(limit)),
        )
    };
    let (file, size) = open_regular(path)?;
    if size > limit as u64 {
        return Err(too_large());
    }
    let bytes = read_at_most(file, size, limit)?;
    if bytes.len() > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// `8 MiB`, `4 GiB`, or bytes.
pub fn size_text(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    match bytes {
        b if b >= 1024 * MIB && b % (1024 * MIB) == 0 => format!("{} GiB", b / (1024 * MIB)),
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b => format!("{b} bytes"),
    }
}

/// Why a file cannot be a JSON object, found without parsing it. The description quotes none
/// of its bytes: such a file may be anything (`/proc/self/environ`, `/etc/shadow`), and a
/// diagnostic must not print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotJson {
    /// A NUL byte at this offset: not a text file.
    Nul(usize),
    /// Not UTF-8 from this offset.
    NotUtf8(usize),
    /// A UTF-8 byte-order mark first (JSON must not have one).
    ByteOrderMark,
    /// The first byte that is not white space is not `{`.
    NotAnObject,
}

impl NotJson {
    /// `None` if `bytes` may be a JSON object (an empty or blank file is left to the parser,
    /// which says so without showing anything).
    pub fn check(bytes: &[u8]) -> Option<NotJson> {
        if let Some(at) = bytes.iter().position(|&b| b == 0) {
            return Some(NotJson::Nul(at));
        }
        if let Err(err) = std::str::from_utf8(bytes) {
            return Some(NotJson::NotUtf8(err.valid_up_to()));
        }
        if bytes.starts_with("\u{feff}".as_bytes()) {
            return Some(NotJson::ByteOrderMark);
        }
        match bytes.iter().find(|b| !b" \t\r\n".contains(b)) {
            Some(b'{') | None => None,
            Some(_) => Some(NotJson::NotAnObject),
        }
    }

    pub fn describe(self) -> String {
        match self {
            NotJson::Nul(at) => {
                format!("it has a NUL byte (offset {at}), so it is not a text file")
            }
            NotJson::NotUtf8(at) => format!("it is not UTF-8 text (offset {at})"),
            NotJson::ByteOrderMark => {
                "it starts with a byte-order mark; save it as UTF-8 without one".to_owned()
            }
            NotJson::NotAnObject => {
                "it does not start with `{`, so it is not a JSON object".to_owned()
            }
        }
    }
}

/// Read `path` as a manifest: a regular file of at most [`MAX_MANIFEST_BYTES`], valid UTF-8.
pub fn read_manifest(path: &Path) -> Result<SourceFile, Problem> {
    let name = path.display().to_string();
    let bytes = read_prefix(path, MAX_MANIFEST_BYTES).map_err(|err| {
        let help = if err.kind() == io::ErrorKind::InvalidInput {
            "a manifest is a TOML text file; name the file, not a device, FIFO or directory"
        } else {
            "check the path; it is taken relative to the current directory"
        };
        Problem::bare(
            "manifest::unreadable",
            format!("failed to read manifest `{name}`: {err}"),
        )
        .with_help(help)
    })?;
    check_manifest_bytes(&name, bytes)
}

/// The size and encoding checks on a manifest's bytes.
pub fn check_manifest_bytes(name: &str, bytes: Vec<u8>) -> Result<SourceFile, Problem> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        // Show only the first line: the point is the size, not the content.
        let first_line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
        let shown = String::from_utf8_lossy(&first_line[..first_line.len().min(80)]).into_owned();
        let file = SourceFile::new(name, shown);
        return Err(Problem::at(
            "manifest::too_large",
            &file,
            0..0,
            format!(
                "manifest is larger than the {} MiB limit",
                MAX_MANIFEST_BYTES / (1024 * 1024)
            ),
            "this file is over the limit",
        )
        .with_help("a chapter manifest is a few KiB; split the chapter or check that this is the right file"));
    }
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        // Not a text file (`/proc/self/environ`, a binary): say so without showing any of it.
        return Err(Problem::at(
            "manifest::not_text",
            &SourceFile::new(name, ""),
            0..0,
            format!("manifest has a NUL byte (offset {at}), so it is not a text file"),
            "its contents are not shown",
        )
        .with_help("name the chapter's TOML manifest"));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(SourceFile::new(name, text)),
        Err(err) => {
            let at = err.utf8_error().valid_up_to();
            let bad = err.as_bytes()[at];
            // The lossy text keeps every byte before `at` as it was, so `at` still points there.
            let file = SourceFile::new(name, String::from_utf8_lossy(err.as_bytes()).into_owned());
            let width = char::REPLACEMENT_CHARACTER.len_utf8();
            Err(Problem::at(
                "manifest::not_utf8",
                &file,
                at..at + width,
                format!("manifest is not valid UTF-8: byte 0x{bad:02X} at offset {at}"),
                "not UTF-8",
            )
            .with_help("save the manifest as UTF-8 (TOML files must be UTF-8)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_utf8_within_the_limit() {
        let file = check_manifest_bytes("m.toml", "title = \"é\"\n".into()).unwrap();
        assert_eq!(file.text(), "title = \"é\"\n");
    }

    #[test]
    fn reports_the_offset_of_the_first_bad_byte() {
        let err = check_manifest_bytes("m.toml", b"ab\n\xffcd".to_vec()).unwrap_err();
        assert_eq!(err.code(), "manifest::not_utf8");
        assert_eq!(err.offset(), 3);
        assert!(
            err.message().contains("0xFF at offset 3"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn tells_what_cannot_be_a_json_object_without_parsing() {
        assert_eq!(NotJson::check(b" \n{\"a\": 1}"), None);
        assert_eq!(NotJson::check(b""), None, "left to the parser");
        assert_eq!(NotJson::check(b"A=1\0B=2\0"), Some(NotJson::Nul(3)));
        assert_eq!(NotJson::check(b"{\"\xe9\"}"), Some(NotJson::NotUtf8(2)));
        assert_eq!(
            NotJson::check("\u{feff}{}".as_bytes()),
            Some(NotJson::ByteOrderMark)
        );
        assert_eq!(NotJson::check(b"\t[{}]"), Some(NotJson::NotAnObject));
        assert_eq!(NotJson::check(b"root:x:0:0"), Some(NotJson::NotAnObject));
    }

    #[test]
    fn reads_only_regular_files_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_bounded(&file, 10).unwrap(), b"0123456789");
        let err = read_bounded(&file, 9).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
        assert_eq!(err.to_string(), "it is larger than the 9 bytes limit");
        assert_eq!(read_prefix(&file, 4).unwrap(), b"01234");
        let err = read_bounded(dir.path(), 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            "it is not a regular file (it is a directory)"
        );
        assert_eq!(size_text(MAX_MANIFEST_BYTES), "8 MiB");
        assert_eq!(size_text(4 << 30), "4 GiB");
    }

    #[test]
    fn refuses_oversized_input() {
        let err = check_manifest_bytes("m.toml", vec![b'#'; MAX_MANIFEST_BYTES + 1]).unwrap_err();
        assert_eq!(err.code(), "manifest::too_large");
    }
}
