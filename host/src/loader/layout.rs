//! An ABI mismatch in one line: the path to the first difference between the host's vtable
//! layout and the plugin's, e.g. `PluginVTable.start -> HostContext.deliver -> InboundFfi.
//! timestamp_ms: i64 in the host, u64 in the plugin`. abi_stable's own report (hundreds of
//! lines for one changed field) is kept for `plugin check --verbose` and `--json`.

use abi_stable::{
    abi_stability::abi_checking::{AbiInstability, AbiInstabilityErrors},
    type_layout::TLFieldOrFunction,
};

/// One line naming where the layouts first differ and how.
pub(crate) fn summarize(errors: &AbiInstabilityErrors) -> String {
    let Some(first) = errors.errors.iter().max_by_key(|e| e.stack_trace.len()) else {
        return format!("{} differs", errors.interface.name());
    };
    let mut path = Vec::new();
    let mut owner = errors.interface.name().to_owned();
    // Whether the last step went through a function pointer or a reference: then the
    // difference lies in the type reached (`OutboundFfi`), which the path must name.
    let mut through_hop = false;
    for step in &first.stack_trace {
        match &step.expected {
            TLFieldOrFunction::Field(field) => {
                // Hops through a function pointer's parameters or a reference say nothing a
                // reader needs: `PluginVTable.start -> HostContext.deliver` is the path.
                through_hop = is_hop(&owner);
                if !through_hop {
                    path.push(format!("{owner}.{}", field.name()));
                }
                owner = field.layout().name().to_owned();
            }
            // A function's parameters come next as fields; its own name is the field's.
            TLFieldOrFunction::Function(_) => {}
        }
    }
    if path.is_empty() || (through_hop && !is_hop(&owner)) {
        path.push(owner);
    }
    // The most telling difference first: a size follows from a field count or a type.
    let what = first
        .errs
        .iter()
        .min_by_key(|e| rank(e))
        .map_or_else(|| "differs".to_owned(), describe);
    format!("{}: {what}", path.join(" -> "))
}

/// A function pointer or a reference: a hop between the types a path names.
fn is_hop(name: &str) -> bool {
    name == "AFunctionPointer" || name == "&"
}

fn rank(error: &AbiInstability) -> u8 {
    match error {
        AbiInstability::FieldCountMismatch(_) | AbiInstability::UnexpectedField(_) => 0,
        AbiInstability::MismatchedPrimitive(_) | AbiInstability::Name(_) => 1,
        AbiInstability::Size(_) | AbiInstability::Alignment(_) => 3,
        _ => 2,
    }
}

fn describe(error: &AbiInstability) -> String {
    match error {
        AbiInstability::FieldCountMismatch(v) => {
            format!(
                "{} fields in the plugin, the host has {}",
                v.found, v.expected
            )
        }
        AbiInstability::MismatchedPrimitive(v) => {
            format!("{:?} in the host, {:?} in the plugin", v.expected, v.found).to_lowercase()
        }
        AbiInstability::Name(v) if v.expected.to_string().len() < 24 => {
            format!("{} in the host, {} in the plugin", v.expected, v.found)
        }
        AbiInstability::Name(v) => {
            format!(
                "type `{}` in the host, `{}` in the plugin",
                v.expected, v.found
            )
        }
        AbiInstability::Size(v) => {
            format!(
                "{} bytes in the host, {} in the plugin",
                v.expected, v.found
            )
        }
        AbiInstability::Alignment(v) => format!(
            "aligned to {} in the host, {} in the plugin",
            v.expected, v.found
        ),
        AbiInstability::UnexpectedField(v) => format!(
            "field `{}` in the host, `{}` in the plugin",
            v.expected.name(),
            v.found.name()
        ),
        AbiInstability::Package(v) => {
            format!(
                "package `{}` in the host, `{}` in the plugin",
                v.expected, v.found
            )
        }
        AbiInstability::PackageVersion(v) => format!(
            "package version {} in the host, {} in the plugin",
            v.expected, v.found
        ),
        other => {
            // The variant's name says enough ("FnQualifierMismatch", ...).
            let debug = format!("{other:?}");
            let name = debug.split(['(', ' ', '{']).next().unwrap_or(&debug);
            format!("differs ({name})")
        }
    }
}
