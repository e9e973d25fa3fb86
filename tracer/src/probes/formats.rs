//! Checks the record layout of each classic tracepoint against what the kernel programs read.

use std::path::Path;

use tracer_common::tracepoints::Tracepoint;

/// `Ok(())` when every field the program reads sits at the expected offset and size in
/// `<tracefs>/events/<category>/<name>/format`; otherwise why not.
pub fn check(tracefs: &str, tp: &Tracepoint) -> Result<(), String> {
    let path = Path::new(tracefs)
        .join("events")
        .join(tp.category)
        .join(tp.name)
        .join("format");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            format!(
                "{} is not readable by this user: run as root, or grant CAP_DAC_READ_SEARCH",
                path.display()
            )
        } else {
            format!(
                "tracepoint {}/{} is not available on this kernel ({}: {e})",
                tp.category,
                tp.name,
                path.display()
            )
        }
    })?;
    check_text(&text, tp)
}

pub fn check_text(text: &str, tp: &Tracepoint) -> Result<(), String> {
    for &(name, offset, size) in tp.fields {
        let found = text
            .lines()
            .find_map(|line| parse_field(line).filter(|f| f.0 == name));
        match found {
            Some((_, o, s)) if o == offset && s == size => {}
            Some((_, o, s)) => {
                return Err(format!(
                    "{}/{} field `{name}` is at offset {o} size {s} on this kernel, the program \
                     expects offset {offset} size {size}",
                    tp.category, tp.name
                ));
            }
            None => {
                return Err(format!(
                    "{}/{} has no field `{name}` on this kernel",
                    tp.category, tp.name
                ));
            }
        }
    }
    Ok(())
}

/// Parses `\tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;` into (name, offset, size).
fn parse_field(line: &str) -> Option<(&str, usize, usize)> {
    let mut parts = line.trim().split(';');
    let decl = parts.next()?.trim().strip_prefix("field:")?;
    let name = decl.split_whitespace().last()?;
    let name = name.split('[').next()?;
    let mut offset = None;
    let mut size = None;
    for p in parts {
        let p = p.trim();
        if let Some(v) = p.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = p.strip_prefix("size:") {
            size = v.parse().ok();
        }
    }
    Some((name, offset?, size?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::tracepoints::ALL;

    const NEWTASK: &str = "name: task_newtask\nID: 205\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;\n\
        \tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;\n\
        \tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;\n";

    #[test]
    fn accepts_the_expected_layout_and_names_a_moved_field() {
        let tp = ALL.iter().find(|t| t.name == "task_newtask").unwrap();
        assert_eq!(check_text(NEWTASK, tp), Ok(()));
        let moved = NEWTASK.replace("offset:32", "offset:40");
        let err = check_text(&moved, tp).unwrap_err();
        assert!(err.contains("clone_flags") && err.contains("40"), "{err}");
        let err = check_text("format:\n", tp).unwrap_err();
        assert!(err.contains("no field `pid`"), "{err}");
    }

    #[test]
    fn this_kernel_matches_every_tracepoint() {
        // Runs against the real tracefs: one of the layouts of each tracepoint must hold on
        // the kernel the tests run on.
        let dir = crate::probes::ensure_tracefs().expect("tracefs");
        for tp in ALL {
            let layouts: Vec<_> = ALL.iter().filter(|t| t.name == tp.name).collect();
            let errors: Vec<String> = layouts.iter().filter_map(|t| check(dir, t).err()).collect();
            assert!(errors.len() < layouts.len(), "{errors:?}");
        }
    }
}
