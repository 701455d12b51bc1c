//! The platform table that `plugin list` and `status` print.

use crate::registry::PlatformStatus;

/// One more column: its header and each row's cell.
pub(super) type Column<'a> = (&'a str, &'a dyn Fn(&PlatformStatus) -> String);

/// Writes one row per platform; `extra`, when given, adds a column (`plugin list`: FROM, where
/// it found each plugin; `status`: SANDBOX).
pub(super) fn write_table(
    out: &mut impl std::io::Write,
    list: &[PlatformStatus],
    extra: Option<Column<'_>>,
) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let mut row = vec![
                s.id.clone(),
                s.name.clone(),
                // The loaded library's version, and the manifest's beside it when they differ.
                if s.version == s.manifest_version {
                    s.version.clone()
                } else {
                    format!("{} (manifest {})", s.version, s.manifest_version)
                },
                s.api.to_string(),
                s.state.as_str().to_owned(),
                if s.configured { "yes" } else { "no" }.to_owned(),
            ];
            row.extend(extra.map(|(_, cell)| cell(s)));
            row
        })
        .collect();
    let mut header = vec!["ID", "NAME", "VERSION", "API", "STATE", "CONFIGURED"];
    if let Some((name, _)) = extra {
        header.push(name);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(&header))?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    if list.is_empty() {
        writeln!(out, "(no plugins installed)")?;
    }
    Ok(())
}

/// A status's `sandbox` line in a few words: `none`, `off`, or the mode and Landlock's ABI,
/// `partial` when the kernel leaves part of it unenforced.
pub(super) fn sandbox_cell(status: &PlatformStatus) -> String {
    let line = status.sandbox.as_str();
    if line.starts_with("not sandboxed") {
        return "none".to_owned();
    }
    let head = line.split(':').next().unwrap_or(line).trim();
    if line.contains("not enforced") {
        format!("{head}, partial")
    } else {
        head.to_owned()
    }
}
