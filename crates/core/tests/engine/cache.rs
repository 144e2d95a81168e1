//! Frozen-backbone features: computed once per distinct view and reused by training and
//! prediction, and recomputed every epoch without a cache.

use super::*;

#[test]
fn frozen_training_runs_the_backbone_once_per_distinct_view_and_never_changes_it() {
    for (kind, views) in [
        (CacheKind::Memory, 1u64),
        (CacheKind::Memory, 2),
        (CacheKind::Disk, 2),
    ] {
        let cfg = TrainConfig {
            feature_cache: kind,
            epochs: 4,
            ..config(Freeze::Frozen)
        };
        let task = Classify::new(Freeze::Frozen);
        let before: Vec<_> = snapshot(&task.params)
            .into_iter()
            .filter(|(n, _)| !n.starts_with("head."))
            .collect();
        assert!(!before.is_empty());
        let data = Images {
            views,
            ..Images::new(10)
        };
        let dir = tempfile::tempdir().unwrap();
        let report = fit(
            &task,
            &data,
            None::<&Images>,
            &cfg,
            &cfg,
            &options(dir.path()),
        )
        .unwrap();
        let after: Vec<_> = snapshot(&task.params)
            .into_iter()
            .filter(|(n, _)| !n.starts_with("head."))
            .collect();
        assert_eq!(before, after, "a frozen backbone changed");
        let decoded = data.decoded.lock().unwrap().clone();
        let distinct: HashSet<_> = decoded.iter().copied().collect();
        assert_eq!(
            decoded.len(),
            distinct.len(),
            "{kind:?}: an input was decoded twice"
        );
        assert!(distinct.iter().all(|&(_, v)| v < views));
        assert_eq!(report.backbone_forwards, distinct.len(), "{kind:?}");
        if views == 1 {
            assert_eq!(
                report.backbone_forwards, 10,
                "once per example, not per epoch"
            );
        } else {
            assert!(report.backbone_forwards < 4 * 10 && report.backbone_forwards > 10);
        }
    }
}

#[test]
fn without_a_cache_the_backbone_runs_every_epoch() {
    let cfg = TrainConfig {
        feature_cache: CacheKind::Off,
        epochs: 2,
        ..config(Freeze::Frozen)
    };
    let (report, _dir) = fit_new(&cfg, 10, None);
    assert_eq!(report.backbone_forwards, 20);
}

#[test]
fn prediction_reuses_cached_frozen_features() {
    let task = Classify::new(Freeze::Frozen);
    let data = Images::new(6);
    let dir = tempfile::tempdir().unwrap();
    let cache = downstream_core::train::feature_cache::FeatureCache::new(
        CacheKind::Memory,
        dir.path().join("cache"),
        true,
        &Device::Cpu,
    )
    .unwrap();
    let mut first = Vec::new();
    predict_all(&task, &data, 4, Some(&cache), |b| {
        first.extend(b.outputs);
        Ok(())
    })
    .unwrap();
    let mut second = Vec::new();
    predict_all(&task, &data, 4, Some(&cache), |b| {
        second.extend(b.outputs);
        Ok(())
    })
    .unwrap();
    assert_eq!(first, second);
    assert_eq!(cache.encoded(), 6, "each example encoded once");
    assert_eq!(
        data.decoded.lock().unwrap().len(),
        6,
        "each input decoded once"
    );
}
