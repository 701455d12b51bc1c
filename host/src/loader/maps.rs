//! What this process really has mapped, read from `/proc/self/maps` (Linux).

use std::path::{Path, PathBuf};

/// The files mapped into this process, or `None` where that cannot be read.
pub fn mapped_files() -> Option<Vec<PathBuf>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut files: Vec<PathBuf> = maps
        .lines()
        .filter_map(|line| {
            // address perms offset dev inode pathname; the pathname may hold spaces.
            let mut rest = line;
            for _ in 0..5 {
                rest = rest.trim_start().split_once(' ')?.1;
            }
            let name = rest.trim();
            let name = name.strip_suffix(" (deleted)").unwrap_or(name);
            name.starts_with('/').then(|| PathBuf::from(name))
        })
        .collect();
    files.sort();
    files.dedup();
    Some(files)
}

/// The address range `path` is mapped at (from its lowest mapping to the end of its highest),
/// or `None` when it is not mapped or the maps cannot be read.
pub(crate) fn range_of(path: &Path) -> Option<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut range: Option<(usize, usize)> = None;
    for line in maps.lines() {
        let (addresses, mut rest) = line.split_once(' ')?;
        for _ in 0..4 {
            rest = rest.trim_start().split_once(' ')?.1;
        }
        let name = rest.trim();
        if Path::new(name.strip_suffix(" (deleted)").unwrap_or(name)) != path {
            continue;
        }
        let (start, end) = addresses.split_once('-')?;
        let (start, end) = (
            usize::from_str_radix(start, 16).ok()?,
            usize::from_str_radix(end, 16).ok()?,
        );
        range = Some(range.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
    }
    range
}

/// Whether `path` is still mapped; `None` where the process's maps cannot be read.
pub fn is_mapped(path: &Path) -> Option<bool> {
    Some(mapped_files()?.iter().any(|p| p == path))
}

/// The mapped files under `dir`: shadow copies that a load left resident.
pub fn mapped_under(dir: &Path) -> Option<Vec<PathBuf>> {
    Some(
        mapped_files()?
            .into_iter()
            .filter(|p| p.starts_with(dir))
            .collect(),
    )
}

/// The ids of this process's threads, or `None` where `/proc/self/task` cannot be read.
pub(crate) fn thread_ids() -> Option<std::collections::HashSet<u32>> {
    Some(
        std::fs::read_dir("/proc/self/task")
            .ok()?
            .filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
    )
}

/// `name (tid)` of each thread in `tids` that still runs.
pub(crate) fn describe_threads(tids: impl IntoIterator<Item = u32>) -> Vec<String> {
    let mut names: Vec<String> = tids
        .into_iter()
        .filter_map(|tid| {
            let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
            Some(format!("{} ({tid})", name.trim()))
        })
        .collect();
    names.sort();
    names
}
