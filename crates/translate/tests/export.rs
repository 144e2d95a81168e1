//! The export against transformers, checked without Python: the committed toy run exports to
//! the very bytes the fixture was made from (a digest), and our greedy search gives, token for
//! token, what transformers' `EncoderDecoderModel.generate` gave on that export
//! (`hf_greedy.json`, sentences whose choices were near ties left out). Both are written by `scripts/reference/export_fixture.sh`; rerun it when
//! the export's format changes on purpose.

mod common;

use candle_core::{Device, Tensor};
use downstream_core::train::Task;
use translate::dataset::TranslationData;
use translate::{pipeline, search};

#[test]
fn export_is_unchanged_and_our_greedy_search_equals_transformers() {
    let fixture = common::export_fixture();
    let tmp = tempfile::tempdir().unwrap();
    let run = common::fixture_run(&fixture, tmp.path());
    let (_, translator, source) = pipeline::load_run(&run, &Device::Cpu).unwrap();

    let export = tmp.path().join("export");
    translate::export::export(&translator, &fixture.join("encoder"), &run, &export).unwrap();
    let digest = downstream_hub::cache::tree_digest(&export).unwrap();
    let expected = std::fs::read_to_string(fixture.join("export.digest")).unwrap();
    assert_eq!(
        digest,
        expected.trim(),
        "the export is not what transformers was checked on: if the change is meant, rerun \
         scripts/reference/export_fixture.sh"
    );

    // The fixture's decoder reads block 1 of its encoder's 2: the export holds that one only.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(export.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["encoder"]["num_hidden_layers"], 1, "{config}");

    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("hf_greedy.json")).unwrap())
            .unwrap();
    let sources: Vec<String> = serde_json::from_value(hf["sources"].clone()).unwrap();
    let hf_ids: Vec<Vec<u32>> = serde_json::from_value(hf["hf_token_ids"].clone()).unwrap();
    let hf_texts: Vec<String> = serde_json::from_value(hf["hf_texts"].clone()).unwrap();
    // The generator's sentences less those where transformers' choice was a near tie.
    let candidates = common::fixture_sources();
    assert!(sources.iter().all(|s| candidates.contains(s)));
    assert!(sources.len() >= 20, "only {} sentences", sources.len());
    assert!(hf_ids.iter().all(|ids| ids.len() > 3), "{hf_ids:?}");

    // One sentence at a time, as transformers ran them: the same ids, step for step.
    for ((src, want), text) in sources.iter().zip(&hf_ids).zip(&hf_texts) {
        let (ids, _) = source.ids_truncated(src).unwrap();
        let features = translator.encode(std::slice::from_ref(&ids)).unwrap();
        let hidden = features[0][0].unsqueeze(0).unwrap();
        let mask = Tensor::ones((1, ids.len()), candle_core::DType::F32, &Device::Cpu).unwrap();
        let ours = search::generate(
            &translator.decoder,
            &hidden,
            &mask,
            &[ids.len()],
            translator.special,
            &translator.search,
        )
        .unwrap();
        assert_eq!(&ours[0], want, "{src}");
        assert_eq!(&translator.target_tokenizer.decode(&ours[0]).unwrap(), text);
    }
    // In padded batches, as `predict` runs them: the same texts.
    let data = TranslationData::sources_only(&sources, &source).unwrap();
    assert_eq!(
        pipeline::translate_all(&translator, &data, 8).unwrap(),
        hf_texts
    );
}
