//! BLEU and chrF against sacreBLEU 2.6.0 on the cases of `tests/fixtures/sacrebleu.json`
//! (written by `scripts/reference/sacrebleu_ref.py`): the 13a tokens, the integer statistics
//! exactly, the scores to 1e-9.

use serde::Deserialize;
use translate::metric::bleu::{self, BleuStats};
use translate::metric::chrf::{self, ChrfStats};
use translate::metric::tokenize::tokenize_13a;

#[derive(Deserialize)]
struct Case {
    name: String,
    hyps: Vec<String>,
    refs: Vec<Vec<String>>,
    bleu: BleuRef,
    chrf: ChrfRef,
    sentence_bleu: Vec<f64>,
    tok_13a: Tokens,
}

#[derive(Deserialize)]
struct BleuRef {
    score: f64,
    counts: Vec<u64>,
    totals: Vec<u64>,
    precisions: Vec<f64>,
    bp: f64,
    sys_len: u64,
    ref_len: u64,
}

#[derive(Deserialize)]
struct ChrfRef {
    score: f64,
}

#[derive(Deserialize)]
struct Tokens {
    hyps: Vec<String>,
    refs: Vec<Vec<String>>,
}

fn cases() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sacrebleu.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-9, "{what}: {got} vs {want}");
}

#[test]
fn the_13a_tokens_equal_sacrebleus() {
    let cases = cases();
    assert!(cases.len() >= 20);
    for c in &cases {
        for (h, want) in c.hyps.iter().zip(&c.tok_13a.hyps) {
            assert_eq!(&tokenize_13a(h), want, "{}: {h:?}", c.name);
        }
        for (stream, want) in c.refs.iter().zip(&c.tok_13a.refs) {
            for (r, w) in stream.iter().zip(want) {
                assert_eq!(&tokenize_13a(r), w, "{}: {r:?}", c.name);
            }
        }
    }
}

#[test]
fn corpus_bleu_and_chrf_equal_sacrebleus() {
    for c in cases() {
        let (mut b, mut f) = (BleuStats::default(), ChrfStats::default());
        for (i, h) in c.hyps.iter().enumerate() {
            let refs: Vec<&str> = c.refs.iter().map(|s| s[i].as_str()).collect();
            b += bleu::segment_stats(h, &refs);
            f += chrf::segment_stats(h, &refs);
            // Sentence BLEU (effective order) against the first reference.
            let sentence = bleu::segment_stats(h, &refs[..1]).score(true);
            close(
                sentence.score,
                c.sentence_bleu[i],
                &format!("{} sentence {i}", c.name),
            );
        }
        let got = b.score(false);
        let want = &c.bleu;
        assert_eq!(got.counts.to_vec(), want.counts, "{} counts", c.name);
        assert_eq!(got.totals.to_vec(), want.totals, "{} totals", c.name);
        assert_eq!(
            (got.sys_len, got.ref_len),
            (want.sys_len, want.ref_len),
            "{}",
            c.name
        );
        close(got.bp, want.bp, &format!("{} bp", c.name));
        for (g, w) in got.precisions.iter().zip(&want.precisions) {
            close(*g, *w, &format!("{} precision", c.name));
        }
        close(got.score, want.score, &format!("{} BLEU", c.name));
        close(f.score(), c.chrf.score, &format!("{} chrF", c.name));
    }
}
