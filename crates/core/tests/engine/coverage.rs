//! Which parameters train: a head reading an intermediate block trains the blocks below it
//! only, a `partial:N` that cannot train what it says is refused, and a trainable parameter
//! without a gradient stops the run (one whose gradient is only numerically zero does not).

use super::*;

/// The names of the trainable parameters, sorted.
fn trainable_names(params: &ParamStore) -> Vec<String> {
    params.trainable().map(|p| p.name.clone()).collect()
}

#[test]
fn a_head_reading_an_intermediate_block_trains_exactly_the_blocks_below_it() {
    // The fixture has blocks 0-2; the head reads block 1, so block 2 and the final norm are
    // neither loaded nor trained, and partial:1 means block 1.
    let task = Classify::reading(Freeze::Partial(1), Readout::UpTo(1));
    assert!(task
        .params
        .iter()
        .all(|p| !p.name.starts_with("encoder.layer.2.") && !p.name.starts_with("layernorm.")));
    let trainable = trainable_names(&task.params);
    assert!(!trainable.is_empty());
    for name in &trainable {
        assert!(
            name.starts_with("encoder.layer.1.") || name.starts_with("head."),
            "{name} trains"
        );
    }
    // Every parameter of block 1 trains, and nothing of block 0.
    let block1 = task
        .params
        .iter()
        .filter(|p| p.name.starts_with("encoder.layer.1."))
        .count();
    assert_eq!(
        trainable
            .iter()
            .filter(|n| n.starts_with("encoder.layer.1."))
            .count(),
        block1
    );
    // Layer decay counts from the block read: block 1 sits one below the head, block 0 two.
    assert_eq!(task.params.top_depth, 3);
    let full = Classify::reading(Freeze::Full, Readout::UpTo(1));
    let groups = AdamW::new(
        &full.params,
        AdamWConfig {
            layer_decay: 0.5,
            backbone_lr_scale: 1.0,
            ..Default::default()
        },
    )
    .unwrap()
    .groups();
    let scale = |n: &str| groups.iter().find(|g| g.name == n).unwrap().lr_scale;
    assert_eq!(scale("head.weight"), 1.0);
    assert_eq!(scale("encoder.layer.1.output.dense.weight"), 0.5);
    assert_eq!(scale("encoder.layer.0.output.dense.weight"), 0.25);
    assert_eq!(scale("embeddings.cls_token"), 0.125);
    // Every mode reaches every parameter it trains, in one step of the task.
    for mode in [
        Freeze::Frozen,
        Freeze::Full,
        Freeze::Partial(1),
        Freeze::Partial(2),
    ] {
        let task = Classify::reading(mode, Readout::UpTo(1));
        let c =
            grad::check_task(&task, &Images::new(6), 6).unwrap_or_else(|e| panic!("{mode}: {e:#}"));
        assert_eq!(c.ok.len(), task.params.trainable().count(), "{mode}");
    }
    // Trained end to end, the run's checkpoint holds nothing above the block read.
    let cfg = TrainConfig {
        epochs: 1,
        ..config(Freeze::Full)
    };
    let dir = tempfile::tempdir().unwrap();
    let report = fit(
        &full,
        &Images::new(8),
        None::<&Images>,
        &cfg,
        &cfg,
        &options(dir.path()),
    )
    .unwrap();
    let ck = checkpoint::load(&report.last_checkpoint, &Device::Cpu).unwrap();
    assert!(ck
        .tensors
        .keys()
        .any(|k| k == "param.encoder.layer.1.output.dense.weight"));
    assert!(ck
        .tensors
        .keys()
        .all(|k| !k.contains("encoder.layer.2.") && !k.contains("layernorm.")));
}

#[test]
fn partial_fine_tuning_that_cannot_train_what_it_says_is_refused() {
    let load = |mode, readout| {
        Vit::load_with(&fixtures().join("vit"), mode, readout, None, &Device::Cpu)
            .err()
            .map(|e| format!("{e:#}"))
    };
    let err = load(Freeze::Partial(3), Readout::UpTo(1)).expect("partial:3 of 2 blocks");
    assert!(
        err.contains("partial:3") && err.contains("partial:2"),
        "{err}"
    );
    let err = load(Freeze::Partial(0), Readout::Final).expect("partial:0");
    assert!(err.contains("frozen"), "{err}");
    let err = load(Freeze::Full, Readout::UpTo(3)).expect("block 3 of 3");
    assert!(err.contains("block 3"), "{err}");
    assert!(load(Freeze::Partial(3), Readout::Final).is_none());
}

/// [`Classify`] with one more trainable parameter that the loss never uses.
struct WithUnused {
    inner: Classify,
}

impl WithUnused {
    fn new() -> Self {
        let mut inner = Classify::new(Freeze::Frozen);
        let top = inner.params.top_depth;
        inner
            .params
            .insert(
                "head.forgotten.weight",
                Tensor::ones((2, 2), DType::F32, &Device::Cpu).unwrap(),
                top,
                true,
            )
            .unwrap();
        Self { inner }
    }
}

impl Task for WithUnused {
    type Input = Tensor;
    type Target = (u32, f32);
    type Output = u32;
    type Metric = Accuracy;
    fn params(&self) -> &ParamStore {
        &self.inner.params
    }
    fn backbone_frozen(&self) -> bool {
        true
    }
    fn encode(&self, inputs: &[Tensor]) -> Result<Vec<Features>> {
        self.inner.encode(inputs)
    }
    fn loss(&self, features: &[&Features], targets: &[&(u32, f32)]) -> Result<Tensor> {
        self.inner.loss(features, targets)
    }
    fn predict(&self, features: &[&Features]) -> Result<Vec<u32>> {
        self.inner.predict(features)
    }
    fn metric(&self) -> Result<Accuracy> {
        Ok(Accuracy::default())
    }
    fn main_metric(&self) -> &str {
        "accuracy"
    }
    fn detached(&self) -> Result<Self> {
        Ok(Self {
            inner: self.inner.detached()?,
        })
    }
}

#[test]
fn a_trainable_parameter_the_loss_does_not_reach_stops_the_run_naming_it() {
    let task = WithUnused::new();
    let cfg = config(Freeze::Frozen);
    let dir = tempfile::tempdir().unwrap();
    let err = format!(
        "{:#}",
        fit(
            &task,
            &Images::new(8),
            None::<&Images>,
            &cfg,
            &cfg,
            &options(dir.path())
        )
        .unwrap_err()
    );
    assert!(
        err.contains("head.forgotten.weight") && err.contains("step 1"),
        "{err}"
    );
    assert!(
        !dir.path().join("checkpoints/last.safetensors").exists(),
        "no update may be saved"
    );
    let err = format!(
        "{:#}",
        grad::check_task(&task, &Images::new(4), 4).unwrap_err()
    );
    assert!(err.contains("head.forgotten.weight"), "{err}");
    assert!(!err.contains("head.bias"), "{err}");
}

#[test]
fn a_key_bias_gradient_that_is_numerically_zero_counts_as_covered() {
    let task = Classify::new(Freeze::Full);
    let marked: Vec<String> = task
        .params
        .iter()
        .filter(|p| p.zero_grad)
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(marked.len(), 3, "one key bias per block: {marked:?}");
    assert!(marked
        .iter()
        .all(|n| n.ends_with("attention.attention.key.bias")));
    let c = grad::check_task(&task, &Images::new(4), 4).unwrap();
    assert!(marked.iter().all(|n| c.ok.contains(n)));
}
