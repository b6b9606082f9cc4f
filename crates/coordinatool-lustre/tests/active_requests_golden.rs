//! Golden tests: every `tests/golden/{active_requests,actions}/*.txt` listing is parsed and
//! rendered in a plain one-line-per-item form, which must equal the `.expected` file next to
//! it. Run with `BLESS=1` to rewrite the `.expected` files after a deliberate change (and
//! review the diff).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use coordinatool_lustre::active_requests::{
    ActionRecord, ActiveRequest, ParseError, parse_actions, parse_active_requests,
};

fn golden_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(kind)
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), |v| v.to_string())
}

fn render_error(out: &mut String, e: &ParseError) {
    writeln!(
        out,
        "L{} ERROR field={}: {e}",
        e.line,
        e.field().unwrap_or("-")
    )
    .unwrap();
}

fn render_request(out: &mut String, r: &ActiveRequest) {
    writeln!(
        out,
        "L{} mdt={} {} fid={} dfid={} compound={:#x} cookie={:#x} archive={} flags={:#x} \
         offset={:#x} length={:#x} gid={:#x} data({})={} canceled={} uuid={} done={}",
        r.line,
        opt(&r.mdt),
        r.action.name(),
        r.fid,
        r.dfid,
        r.compound_id,
        r.cookie,
        r.archive_id,
        r.flags,
        r.extent.offset,
        r.extent.length,
        r.gid,
        r.data.len(),
        hex(&r.data),
        opt(&r.canceled),
        opt(&r.uuid),
        opt(&r.done),
    )
    .unwrap();
}

fn render_record(out: &mut String, r: &ActionRecord) {
    writeln!(
        out,
        "L{} mdt={} {} {} lrh_type={:#x} lrh_len={} idx={}/{} fid={} dfid={} compound={:#x} \
         cookie={:#x} archive={} flags={:#x} offset={:#x} length={:#x} gid={:#x} datalen={} \
         data({})={} truncated={}",
        r.line,
        opt(&r.mdt),
        r.status.name(),
        r.action.name(),
        r.lrh_type,
        r.lrh_len,
        r.cat_idx,
        r.rec_idx,
        r.fid,
        r.dfid,
        r.compound_id,
        r.cookie,
        r.archive_id,
        r.flags,
        r.extent.offset,
        r.extent.length,
        r.gid,
        r.datalen,
        r.data.len(),
        hex(&r.data),
        r.data_truncated(),
    )
    .unwrap();
}

fn check_dir(kind: &str, render: fn(&str) -> String, required: &[&str]) {
    let dir = golden_dir(kind);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    inputs.sort();
    for name in required {
        assert!(
            inputs.iter().any(|p| p.file_stem().unwrap() == *name),
            "{kind}/{name}.txt is missing"
        );
    }
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for input in &inputs {
        let text = std::fs::read_to_string(input).unwrap();
        let got = render(&text);
        let expected_path = input.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        if got != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{got}",
                input.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn render_active_requests(text: &str) -> String {
    let mut out = String::new();
    for r in parse_active_requests(text) {
        match r {
            Ok(r) => render_request(&mut out, &r),
            Err(e) => render_error(&mut out, &e),
        }
    }
    out
}

fn render_actions(text: &str) -> String {
    let mut out = String::new();
    for r in parse_actions(text) {
        match r {
            Ok(r) => render_record(&mut out, &r),
            Err(e) => render_error(&mut out, &e),
        }
    }
    out
}

#[test]
fn active_requests_golden_files() {
    check_dir(
        "active_requests",
        render_active_requests,
        &[
            "2.7",
            "2.12",
            "2.15",
            "2.16",
            "2.17",
            "master",
            "empty",
            "empty-lctl",
            "errors",
        ],
    );
}

#[test]
fn actions_golden_files() {
    check_dir(
        "actions",
        render_actions,
        &["2.7", "2.15", "master", "errors"],
    );
}

/// Every valid golden line prints back exactly as the kernel wrote it.
#[test]
fn golden_lines_print_back_verbatim() {
    for (kind, is_actions) in [("active_requests", false), ("actions", true)] {
        for entry in std::fs::read_dir(golden_dir(kind)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "txt") || path.ends_with("errors.txt") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, line) in text.lines().enumerate() {
                // Strip an lctl header, keeping a request printed on it.
                let body = match line.split_once("hsm.") {
                    Some((_, rest)) if line.starts_with("mdt.") => rest.split_once('=').unwrap().1,
                    _ => line,
                };
                if body.is_empty() {
                    continue;
                }
                let printed = if is_actions {
                    body.parse::<ActionRecord>().unwrap().to_string()
                } else {
                    body.parse::<ActiveRequest>().unwrap().to_string()
                };
                assert_eq!(printed, body, "{}:{}", path.display(), i + 1);
            }
        }
    }
}
