//! Reading a manifest file: the size limit and UTF-8 check, before any parsing.

use std::io::Read;
use std::path::Path;

use super::diagnostic::{Problem, SourceFile};

/// Manifests larger than this are refused before parsing (8 MiB; real chapters are a few KiB).
pub const MAX_MANIFEST_BYTES: usize = 8 * 1024 * 1024;

/// Read `path` as a manifest: at most [`MAX_MANIFEST_BYTES`], valid UTF-8.
pub fn read_manifest(path: &Path) -> Result<SourceFile, Problem> {
    let name = path.display().to_string();
    let mut bytes = Vec::new();
    // Read one byte past the limit, so an oversized file is detected without reading it all.
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(MAX_MANIFEST_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|err| {
            Problem::bare(
                "manifest::unreadable",
                format!("failed to read manifest `{name}`: {err}"),
            )
            .with_help("check the path; it is taken relative to the current directory")
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
    fn refuses_oversized_input() {
        let err = check_manifest_bytes("m.toml", vec![b'#'; MAX_MANIFEST_BYTES + 1]).unwrap_err();
        assert_eq!(err.code(), "manifest::too_large");
    }
}
