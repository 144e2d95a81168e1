//! The named corpora's extraction rules on small inputs written here: the LibreOffice help's
//! alignment by page and id, and Ding's sentence pairs. (The real corpora are fetched, never
//! committed; on Debian's packages these rules give 23,072 and 17,066 pairs.)

use std::path::Path;

use translate::data::ding::{clean, line_pairs};
use translate::data::libreoffice::{align, segments, split_of_page};
use translate::data::{Pair, Split};

fn page(dir: &Path, rel: &str, body: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let html = format!(
        "<!DOCTYPE html><html><body>{body}<p id=\"bm_module\"></p><p id=\"bm_HID\"></p></body></html>"
    );
    std::fs::write(path, html).unwrap();
}

#[test]
fn help_segments_keep_the_default_branch_and_plain_text() {
    let html = r#"<p id="par_1">You can also call the dialog from the <span class="switchinline"><span hidden="true" id="MACx" class="MAC"><span class="emph">LibreOffice - Preferences</span></span><span hidden="true" id="defaultx"><span class="emph">Tools - Options</span></span></span> page &amp; more.<br/>Next&shy;line</p><h2 id="hd_2">A  heading
  over two lines</h2><p class="embedded">no id</p><p id="bm_system"></p>"#;
    let got = segments(html);
    assert_eq!(
        got,
        vec![
            (
                "par_1".to_string(),
                "You can also call the dialog from the Tools - Options page & more. Nextline"
                    .to_string()
            ),
            ("hd_2".to_string(), "A heading over two lines".to_string()),
        ]
    );
}

#[test]
fn help_pages_align_by_page_and_id_with_the_documented_filters() {
    let tmp = tempfile::tempdir().unwrap();
    let (en, de) = (tmp.path().join("en-US"), tmp.path().join("de"));
    let long = "Choose Format - Character to change the font of the text.";
    page(
        &en,
        "text/l.html",
        &format!(
            r#"<p id="a">{long}</p>
            <p id="short">Too short to keep.</p>
            <p id="same">LibreOffice Calc LibreOffice Writer LibreOffice Impress</p>
            <p id="rep">Repeated uniform sentence in this help page here.</p>
            <p id="rep">Repeated uniform sentence in this help page here.</p>
            <p id="amb">An ambiguous id with two different texts in English.</p>
            <p id="amb">2</p>
            <p id="only_en">This paragraph exists in the English page only.</p>"#
        ),
    );
    page(
        &de,
        "text/l.html",
        r#"<p id="amb">2</p>
            <p id="amb">Eine mehrdeutige Kennung mit zwei Texten.</p>
            <p id="a">Wählen Sie Format - Zeichen, um die Schriftart zu ändern.</p>
            <p id="short">Zu kurz.</p>
            <p id="same">LibreOffice Calc LibreOffice Writer LibreOffice Impress</p>
            <p id="rep">Wiederholter Satz.</p><p id="rep">Wiederholter Satz.</p>"#,
    );
    // The same English sentence on a second page (training split) is not kept twice.
    page(&en, "text/a.html", &format!(r#"<p id="x">{long}</p>"#));
    page(&de, "text/a.html", r#"<p id="x">Anders übersetzt.</p>"#);
    // A page of one language only is skipped.
    page(
        &en,
        "text/en_only.html",
        r#"<p id="y">Nothing in German for this page at all.</p>"#,
    );

    let (splits, counts) = align(&en, &de).unwrap();
    assert_eq!(counts.pages, 2);
    assert_eq!(split_of_page("text/l.html"), Split::Test);
    assert_eq!(split_of_page("text/e.html"), Split::Val);
    assert_eq!(split_of_page("text/a.html"), Split::Train);
    let pair = |s: &str, t: &str| Pair {
        source: s.into(),
        target: t.into(),
    };
    // Pages go in path order: text/a.html first, so its translation of `long` wins.
    assert_eq!(splits[&Split::Train], vec![pair(long, "Anders übersetzt.")]);
    assert_eq!(
        splits[&Split::Test],
        vec![pair(
            "Repeated uniform sentence in this help page here.",
            "Wiederholter Satz."
        )]
    );
    assert_eq!(counts.kept, 2);
}

#[test]
fn ding_lines_give_their_full_sentences_without_annotations() {
    let line = "Aalsuppe {f} [cook.] | Ein Bild sagt mehr als tausend Worte. | Reg mich nicht auf! <aufregen> :: eel soup | A picture is worth a thousand words. | Don't you get me all worked up now!";
    assert_eq!(
        line_pairs(line),
        vec![
            Pair {
                source: "A picture is worth a thousand words.".into(),
                target: "Ein Bild sagt mehr als tausend Worte.".into()
            },
            Pair {
                source: "Don't you get me all worked up now!".into(),
                target: "Reg mich nicht auf!".into()
            },
        ]
    );
    // A dictionary phrase ending in "sth." is not a sentence.
    assert!(line_pairs("etw. abheften :: to file away <> sth. in a folder.").is_empty());
    // Alternatives split at "; " when the next word starts a sentence, and pair one to one.
    let alts = line_pairs(
        "Ich bin heute sehr müde.; Ich war gestern müde. :: I am very tired today.; I was tired yesterday, really.",
    );
    assert_eq!(alts.len(), 2);
    assert_eq!(alts[1].source, "I was tired yesterday, really.");
    assert_eq!(alts[1].target, "Ich war gestern müde.");
    // A semicolon before a lower-case word stays inside the sentence.
    let one = line_pairs("Abschreiben von einem ist Plagiat; von zehn ist es Forschung. :: To copy from one is plagiarism; to copy from ten is research.");
    assert_eq!(one.len(), 1);
    assert_eq!(
        one[0].source,
        "To copy from one is plagiarism; to copy from ten is research."
    );
    // Annotations go, nested ones too, and so do markers and the space before punctuation.
    assert_eq!(
        clean("It’s a pain (in the (very) neck) having to do it again [Br.] !"),
        "It’s a pain having to do it again!"
    );
    assert_eq!(
        clean("Bye, bye, and keep in touch! /KIT/"),
        "Bye, bye, and keep in touch!"
    );
    assert_eq!(clean("Wait for it ..."), "Wait for it ...");
}
