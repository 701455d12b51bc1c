//! Start-up repair: a partial last line, as a crash inside a `write()` can leave, is moved to
//! `<journal>.corrupt` and cut from the journal, so the next record starts on a line of its own.

use std::{
    fs::OpenOptions,
    io::{self, Write as _},
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// What [`repair`] cut from the end of a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Repaired {
    /// The bytes of the partial line.
    pub bytes: u64,
    /// Where they were moved.
    pub side_file: PathBuf,
}

/// Blocks read backwards while looking for the last line's end.
const BLOCK: u64 = 64 * 1024;

/// Cuts a partial last line from the journal at `path` (a regular file; anything else, or no
/// file, is left alone) and appends it, with a newline, to `<path>.corrupt` (mode 0600).
pub(crate) fn repair(path: &Path) -> io::Result<Option<Repaired>> {
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok(None);
    }
    let len = meta.len();
    let mut last = [0u8];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(None);
    }
    // Where the partial line starts: after the last newline, or at 0 when there is none.
    let mut end = len;
    let mut cut_at = 0;
    let mut block = vec![0u8; BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let part = &mut block[..(end - start) as usize];
        file.read_exact_at(part, start)?;
        if let Some(i) = part.iter().rposition(|&b| b == b'\n') {
            cut_at = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    let mut tail = vec![0u8; (len - cut_at) as usize];
    file.read_exact_at(&mut tail, cut_at)?;
    tail.push(b'\n');
    let mut side_name = path.as_os_str().to_owned();
    side_name.push(".corrupt");
    let side_file = PathBuf::from(side_name);
    let mut side = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&side_file)?;
    side.write_all(&tail)?;
    side.sync_data()?;
    // Only once the fragment is safe in the side file is it cut from the journal.
    file.set_len(cut_at)?;
    file.sync_data()?;
    Ok(Some(Repaired {
        bytes: len - cut_at,
        side_file,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_moves_to_the_side_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let repaired = repair(&path).unwrap().unwrap();
        assert_eq!(repaired.bytes, 5);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        assert_eq!(
            std::fs::read_to_string(&repaired.side_file).unwrap(),
            "{\"c\":\n"
        );
        assert_eq!(repair(&path).unwrap(), None, "a whole file is left alone");
    }

    #[test]
    fn a_file_that_is_one_partial_line_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        std::fs::write(&path, vec![b'x'; 200_000]).unwrap();
        assert_eq!(repair(&path).unwrap().unwrap().bytes, 200_000);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert_eq!(repair(&dir.path().join("none")).unwrap(), None);
    }
}
