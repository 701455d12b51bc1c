//! A minimal ELF check run on the shadow copy before `dlopen`.
//!
//! `dlopen` maps a library's segments straight from the file. A truncated library maps pages
//! past the end of the file, and the first touch of one of them (relocations, with `RTLD_NOW`)
//! is a SIGBUS that kills the host. So before `dlopen`, check that the file is a 64-bit
//! little-endian shared object whose program headers and loadable segments lie inside it.

use std::{fs::File, io, os::unix::fs::FileExt, path::Path};

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const ET_DYN: u16 = 3;

/// Why a file is not a loadable shared object.
pub(crate) fn check_shared_object(path: &Path) -> io::Result<Result<(), String>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut header = [0u8; 64];
    let head = file.read_at(&mut header, 0)?;
    if head < 4 || header[..4] != *b"\x7fELF" {
        return Ok(Err("not an ELF file (no \\x7fELF magic)".into()));
    }
    if len < 64 {
        return Ok(Err(format!(
            "{len} bytes is too short for an ELF header (truncated?)"
        )));
    }
    file.read_exact_at(&mut header, 0)?;
    if header[4] != 2 || header[5] != 1 {
        return Ok(Err("not a 64-bit little-endian ELF file".into()));
    }
    let e_type = u16_at(&header, 16);
    if e_type != ET_DYN {
        return Ok(Err(format!("ELF type {e_type} is not a shared object (3)")));
    }
    let phoff = u64_at(&header, 32);
    let shoff = u64_at(&header, 40);
    let phentsize = u64::from(u16_at(&header, 54));
    let phnum = u64::from(u16_at(&header, 56));
    let shentsize = u64::from(u16_at(&header, 58));
    let shnum = u64::from(u16_at(&header, 60));
    if phentsize < 56 || phoff.saturating_add(phentsize * phnum) > len {
        return Ok(Err(format!(
            "program headers end past the file's {len} bytes (truncated?)"
        )));
    }
    if shoff.saturating_add(shentsize * shnum) > len {
        return Ok(Err(format!(
            "section headers end past the file's {len} bytes (truncated?)"
        )));
    }
    let mut phdr = vec![0u8; usize::try_from(phentsize).unwrap_or(56)];
    for i in 0..phnum {
        file.read_exact_at(&mut phdr, phoff + i * phentsize)?;
        let p_type = u32::from_le_bytes(phdr[0..4].try_into().expect("4 bytes"));
        if p_type != PT_LOAD && p_type != PT_DYNAMIC {
            continue;
        }
        let offset = u64_at(&phdr, 8);
        let filesz = u64_at(&phdr, 32);
        if offset.saturating_add(filesz) > len {
            return Ok(Err(format!(
                "segment {i} needs bytes {offset}..{} but the file has {len} (truncated?)",
                offset.saturating_add(filesz)
            )));
        }
    }
    Ok(Ok(()))
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}
