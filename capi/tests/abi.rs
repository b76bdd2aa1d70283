//! tutti.h and the Rust side agree: abi.c prints the header's constants, sizes and offsets
//! for comparison with the crate's, and links a table of every function the header
//! declares; the header's functions, abi.c's table and the crate's exports are one list.

mod common;

use common::{compile, crate_dir, temp_dir};
use std::collections::{BTreeMap, BTreeSet};
use std::mem::{offset_of, size_of};
use std::process::Command;
use tutti::*;

/// Identifiers directly followed by `(` that start with `tutti_`, outside C comments.
fn called_names(c_source: &str) -> BTreeSet<String> {
    let mut code = String::new();
    let mut rest = c_source;
    while let Some(start) = rest.find("/*") {
        code.push_str(&rest[..start]);
        rest = rest[start..]
            .find("*/")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    code.push_str(rest);
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    code.split('(')
        .filter_map(|before| {
            let ident: String = before
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
                .chars()
                .rev()
                .collect();
            ident.starts_with("tutti_").then_some(ident)
        })
        .collect()
}

/// The identifier `s` starts with (letters, digits, `_`).
fn leading_ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// `sizeof(c_name)` and `offsetof(c_name.field)` of each field, as the Rust type `ty` lays
/// them out, in that order.
macro_rules! layout {
    ($ty:ty, $c_name:literal, [$($field:ident),* $(,)?]) => {
        vec![
            (format!("sizeof({})", $c_name), size_of::<$ty>()),
            $((format!("offsetof({}.{})", $c_name, stringify!($field)), offset_of!($ty, $field)),)*
        ]
    };
}

fn read(path: &str) -> String {
    std::fs::read_to_string(crate_dir().join(path)).unwrap()
}

#[test]
fn header_functions_are_the_exported_functions() {
    let declared = called_names(&read("include/tutti.h"));
    let exported: BTreeSet<String> = read("src/lib.rs")
        .split("extern \"C\" fn ")
        .skip(1)
        .map(leading_ident)
        .collect();
    assert!(declared.len() >= 17, "{declared:?}");
    assert_eq!(declared, exported, "tutti.h declares / src/lib.rs exports");
    // abi.c takes the address of each one (cast to any_fn), so it fails to link if the
    // library lacks one.
    let abi_c = read("tests/c/abi.c");
    let listed: BTreeSet<String> = abi_c.split("(any_fn)").skip(1).map(leading_ident).collect();
    assert_eq!(listed, declared, "abi.c's table / tutti.h");
}

#[test]
fn header_constants_sizes_and_offsets_match_the_library() {
    let dir = temp_dir("abi");
    let program = compile(&crate_dir().join("tests/c/abi.c"), &dir, "abi", false);
    let out = Command::new(&program).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let c: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.rsplit_once(' ')).collect();
    let get = |name: &str| -> i64 {
        c.get(name)
            .unwrap_or_else(|| panic!("abi.c printed no {name}"))
            .parse()
            .unwrap()
    };

    let mut expected: Vec<(String, i64)> = ERRORS
        .iter()
        .map(|(code, name, _)| (name.to_string(), i64::from(*code)))
        .collect();
    for (name, value) in [
        ("TUTTI_RIGHT_PUBLISH", TUTTI_RIGHT_PUBLISH),
        ("TUTTI_RIGHT_SUBSCRIBE", TUTTI_RIGHT_SUBSCRIBE),
        ("TUTTI_MODE_DEFAULT", TUTTI_MODE_DEFAULT),
        ("TUTTI_MODE_UNRELIABLE", TUTTI_MODE_UNRELIABLE),
        ("TUTTI_MODE_BIMODAL", TUTTI_MODE_BIMODAL),
        ("TUTTI_MODE_ORDERED", TUTTI_MODE_ORDERED),
        ("TUTTI_EVENT_MESSAGE", TUTTI_EVENT_MESSAGE),
        ("TUTTI_EVENT_LAGGED", TUTTI_EVENT_LAGGED),
        ("TUTTI_EVENT_LOST", TUTTI_EVENT_LOST),
        ("TUTTI_EVENT_VIEW", TUTTI_EVENT_VIEW),
        ("TUTTI_EVENT_CONFCHG", TUTTI_EVENT_CONFCHG),
        ("TUTTI_EVENT_INSTALLED", TUTTI_EVENT_INSTALLED),
        ("TUTTI_JOIN_SAFE", TUTTI_JOIN_SAFE),
        ("TUTTI_JOIN_CPG", TUTTI_JOIN_CPG),
    ] {
        expected.push((name.into(), i64::from(value)));
    }
    let sizes = [
        vec![
            ("sizeof(tutti_error_t)".to_string(), size_of::<TuttiError>()),
            ("sizeof(tutti_group_t)".to_string(), size_of::<u32>()),
        ],
        layout!(
            TuttiJoinOptions,
            "tutti_join_options_t",
            [size, rights, mode, flags]
        ),
        layout!(
            TuttiEvent,
            "tutti_event_t",
            [kind, group, seq, sender, count, payload, len]
        ),
        layout!(
            TuttiView,
            "tutti_view_t",
            [
                id,
                members,
                n_members,
                joined,
                n_joined,
                left,
                left_reasons,
                n_left
            ]
        ),
        layout!(
            TuttiCpgProcess,
            "tutti_cpg_process_t",
            [nodeid, pid, reason, session]
        ),
        layout!(
            TuttiConfchg,
            "tutti_confchg_t",
            [ring_id, ring, n_ring, members, n_members, joined, n_joined, left, n_left]
        ),
    ];
    for (name, value) in sizes.into_iter().flatten() {
        expected.push((name, value as i64));
    }
    for (name, value) in &expected {
        assert_eq!(
            get(name),
            *value,
            "{name}: tutti.h says {}, the library {value}",
            get(name)
        );
    }
    // Every TUTTI_ERR_ the header names is one the library knows (and the reverse, above).
    let header = read("include/tutti.h");
    let header_errors: BTreeSet<&str> = header
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| (w.starts_with("TUTTI_ERR_") && w.len() > 10) || *w == "TUTTI_OK")
        .collect();
    let known: BTreeSet<&str> = ERRORS.iter().map(|(_, name, _)| *name).collect();
    assert_eq!(header_errors, known);
    assert_eq!(get("functions") as usize, called_names(&header).len());
    assert!(
        text.contains(&format!(
            "TUTTI_JOIN_OPTIONS_INIT {} 0 {TUTTI_MODE_DEFAULT} 0",
            size_of::<TuttiJoinOptions>()
        )),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn strerror_names_every_code_and_refuses_none() {
    let mut texts = BTreeSet::new();
    for (code, name, text) in ERRORS {
        // SAFETY: tutti_strerror returns a static NUL-terminated string for any code.
        let got = unsafe { std::ffi::CStr::from_ptr(tutti_strerror(*code)) };
        assert_eq!(got, *text, "{name}");
        assert!(texts.insert(got.to_bytes().to_vec()), "{name}: text used twice");
    }
    // SAFETY: as above.
    let unknown = unsafe { std::ffi::CStr::from_ptr(tutti_strerror(-9999)) };
    assert!(unknown.to_str().unwrap().contains("unknown"));
}

/// The C example in the workspace's README.md compiles and links (inside a `main`).
#[test]
fn readme_c_example_compiles() {
    let readme = std::fs::read_to_string(crate_dir().join("../README.md")).unwrap();
    let start = readme.find("```c\n").expect("README.md has a ```c block") + 5;
    let block = &readme[start..start + readme[start..].find("```").unwrap()];
    let (includes, body): (Vec<&str>, Vec<&str>) = block.lines().partition(|l| l.starts_with("#include"));
    let program = format!(
        "{}\nint main(void) {{\n{}\nreturn 0;\n}}\n",
        includes.join("\n"),
        body.join("\n")
    );
    let dir = temp_dir("readme");
    let source = dir.join("readme.c");
    std::fs::write(&source, program).unwrap();
    compile(&source, &dir, "readme", false);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every example program compiles and links, warnings as errors (pubsub.c also runs, in
/// c_api.rs; throughput.c is a benchmark, run by hand).
#[test]
fn every_example_compiles() {
    let dir = temp_dir("examples");
    let mut built = 0;
    for entry in std::fs::read_dir(crate_dir().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "c") {
            let name = path.file_stem().unwrap().to_str().unwrap().to_string();
            compile(&path, &dir, &name, false);
            built += 1;
        }
    }
    assert!(built >= 2, "examples/*.c: {built}");
    let _ = std::fs::remove_dir_all(&dir);
}
