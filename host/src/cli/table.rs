//! The platform table that `plugin list` and `status` print.

use crate::registry::PlatformStatus;

/// Writes `list` as aligned columns.
pub(super) fn write_table(
    out: &mut impl std::io::Write,
    list: &[PlatformStatus],
) -> std::io::Result<()> {
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|s| {
            [
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
            ]
        })
        .collect();
    let header = ["ID", "NAME", "VERSION", "API", "STATE", "CONFIGURED"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(header))?;
    for row in &rows {
        writeln!(out, "{}", line(row.each_ref().map(String::as_str)))?;
    }
    if list.is_empty() {
        writeln!(out, "(no plugins installed)")?;
    }
    Ok(())
}
