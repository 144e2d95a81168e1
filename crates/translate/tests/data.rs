//! Parallel text in, with every bad input named by file and line.

use std::path::Path;

use translate::data::{read_aligned, read_tsv, write_tsv, Pair};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn tsv_and_aligned_files_read_the_same_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let tsv = write(
        tmp.path(),
        "a.tsv",
        "Open the file.\tÖffnen Sie die Datei.\r\nClose it!\tSchließen Sie sie!".as_bytes(),
    );
    let pairs = read_tsv(&tsv).unwrap();
    assert_eq!(
        pairs,
        vec![
            Pair {
                source: "Open the file.".into(),
                target: "Öffnen Sie die Datei.".into()
            },
            Pair {
                source: "Close it!".into(),
                target: "Schließen Sie sie!".into()
            },
        ]
    );
    let en = write(tmp.path(), "a.en", b"Open the file.\nClose it!\n");
    let de = write(
        tmp.path(),
        "a.de",
        "Öffnen Sie die Datei.\nSchließen Sie sie!\n".as_bytes(),
    );
    assert_eq!(read_aligned(&en, &de).unwrap(), pairs);
    // Written back, it reads the same.
    let out = tmp.path().join("out.tsv");
    write_tsv(&out, &pairs).unwrap();
    assert_eq!(read_tsv(&out).unwrap(), pairs);
}

fn error(result: anyhow::Result<Vec<Pair>>) -> String {
    format!("{:#}", result.expect_err("bad input must be refused"))
}

#[test]
fn bad_input_is_an_error_naming_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let no_tab = write(d, "no_tab.tsv", b"Fine.\tGut.\nNo tab here\n");
    let e = error(read_tsv(&no_tab));
    assert!(e.contains("no_tab.tsv:2") && e.contains("0 tab"), "{e}");

    let two_tabs = write(d, "two.tsv", b"a\tb\tc\n");
    let e = error(read_tsv(&two_tabs));
    assert!(e.contains("two.tsv:1") && e.contains("2 tab"), "{e}");

    let empty = write(d, "empty.tsv", b"Fine.\tGut.\nFine.\t  \n");
    let e = error(read_tsv(&empty));
    assert!(
        e.contains("empty.tsv:2") && e.contains("target side is empty"),
        "{e}"
    );

    let bad = write(d, "bad.tsv", b"Fine.\tGut.\nCaf\xe9.\tCaf\xe9.\n");
    let e = error(read_tsv(&bad));
    assert!(e.contains("bad.tsv:2") && e.contains("UTF-8"), "{e}");

    let en = write(d, "x.en", b"One.\nTwo.\nThree.\n");
    let de = write(d, "x.de", b"Eins.\nZwei.\n");
    let e = error(read_aligned(&en, &de));
    assert!(
        e.contains("x.en has 3 lines") && e.contains("x.de has 2"),
        "{e}"
    );

    let de = write(d, "y.de", b"Eins.\n\nDrei.\n");
    let e = error(read_aligned(&en, &de));
    assert!(e.contains("x.en:2") && e.contains("y.de:2"), "{e}");

    let missing = error(read_tsv(&d.join("nowhere.tsv")));
    assert!(missing.contains("nowhere.tsv"), "{missing}");
}

#[test]
fn hostile_text_files_read_or_fail_never_panic() {
    use downstream_core::faults::mutate::never_panics;
    let valid = "the red cat .\tdie rote Katze .\nopen the file .\töffne die Datei .\r\n\
                 ein Satz\tone sentence\n"
        .as_bytes();
    let read = never_panics("tsv", "pairs.tsv", valid, 51, 400, |p: &Path| read_tsv(p));
    assert!(read > 0, "no mutant was readable");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("b.de");
    std::fs::write(&target, "eins .\nzwei .\ndrei .\n").unwrap();
    never_panics(
        "aligned",
        "a.en",
        b"one .\ntwo .\nthree .\n",
        52,
        300,
        |p: &Path| read_aligned(p, &target),
    );
}

#[test]
fn a_line_of_megabytes_is_refused_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.tsv");
    let mut text = b"a short one .\tein kurzer .\n".to_vec();
    text.extend(std::iter::repeat_n(b'x', 3 << 20));
    text.extend(b"\tx\n");
    std::fs::write(&path, text).unwrap();
    let err = format!("{:#}", read_tsv(&path).unwrap_err());
    assert!(
        err.contains("huge.tsv:2") && err.contains("longer than"),
        "{err}"
    );
}

#[test]
fn a_byte_order_mark_is_not_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let only = write(dir.path(), "bom.tsv", b"\xef\xbb\xbf");
    assert!(read_tsv(&only).unwrap().is_empty());
    let first = write(dir.path(), "a.tsv", "\u{feff}one .\teins .\n".as_bytes());
    assert_eq!(read_tsv(&first).unwrap()[0].source, "one .");
}
