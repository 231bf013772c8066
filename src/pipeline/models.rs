//! The processor's side of the model registry: which model scores the next
//! batch, switched without a restart when another one is activated, and the
//! background checks that retrain on a schedule or on feature drift.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::warn;

use crate::core::clock::Clock;
use crate::events::MILLIS_PER_DAY;
use crate::metrics::internal_events::{
    DriftChecked, ModelRetrainFailed, ModelRetrained, ModelSwitched,
};
use crate::metrics::Metrics;
use crate::ml::training::NoProgress;
use crate::ml::{ActiveModel, ScoringConfig};
use crate::registry::{
    dataset_from_store, load_active, recent_traffic, train_and_register, Activation, RegistryError,
    TRAFFIC_SAMPLE,
};
use crate::store::LeadStore;

/// The model the next batch is scored with. A batch takes one snapshot, so
/// every event of a batch is scored by the same version.
#[derive(Default)]
pub struct ModelSlot {
    current: RwLock<Option<Arc<ActiveModel>>>,
}

impl ModelSlot {
    pub fn current(&self) -> Option<Arc<ActiveModel>> {
        self.current.read().expect("model slot lock").clone()
    }

    fn version(&self) -> Option<i64> {
        self.current().map(|m| m.version)
    }

    fn set(&self, model: Option<ActiveModel>) {
        *self.current.write().expect("model slot lock") = model.map(Arc::new);
    }
}

pub struct ModelWatcher<S: LeadStore> {
    pub store: Arc<S>,
    pub scoring: ScoringConfig,
    pub slot: Arc<ModelSlot>,
    pub metrics: Arc<Metrics>,
    /// When a retrain is due, and what a new model's `trained_at` says.
    pub clock: Arc<dyn Clock>,
}

impl<S: LeadStore + 'static> ModelWatcher<S> {
    /// Loads the active model (if the registry has one) into the slot.
    pub async fn refresh(&self) -> Result<(), RegistryError> {
        let active = self.store.active_model_version().await?;
        if active == self.slot.version() {
            return Ok(());
        }
        let model = load_active(self.store.as_ref()).await?;
        let version = model.as_ref().map(|m| m.version);
        let had = self.slot.version();
        self.slot.set(model);
        self.metrics.emit(ModelSwitched {
            from: had,
            to: version,
        });
        Ok(())
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let model = &self.scoring.model;
        let mut poll = tokio::time::interval(Duration::from_millis(model.poll_interval_ms));
        let check_every = Duration::from_secs(model.drift_check_interval_s);
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + check_every, check_every);
        let mut last_retrain: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = poll.tick() => {
                    if let Err(e) = self.refresh().await {
                        warn!(error = %e, "could not load the active model; scoring with the previous one");
                    }
                }
                _ = check.tick() => {
                    if let Err(e) = self.check(&mut last_retrain).await {
                        warn!(error = %e, "model check failed");
                    }
                }
            }
        }
    }

    /// Exports drift and retrains when the schedule or the drift says so.
    async fn check(&self, last_retrain: &mut Option<Instant>) -> Result<(), RegistryError> {
        // The first model comes from `leadflow model train`: a processor
        // never starts scoring with ML on its own.
        let Some(active) = self.slot.current() else {
            return Ok(());
        };
        let config = &self.scoring.model;
        let mut reason = None;
        if let Some(profile) = &active.profile {
            let traffic = recent_traffic(
                self.store.as_ref(),
                &self.scoring,
                &active.model,
                TRAFFIC_SAMPLE,
            )
            .await?;
            if traffic.rows() >= config.drift_min_rows {
                let psi = profile.psi(&traffic);
                let mut worst = ("", 0.0);
                for (feature, value) in &psi {
                    if *value > worst.1 {
                        worst = (feature, *value);
                    }
                }
                let drifted = config.drift_threshold > 0.0 && worst.1 > config.drift_threshold;
                self.metrics.emit(DriftChecked {
                    psi: &psi,
                    worst,
                    rows: traffic.rows(),
                    threshold: config.drift_threshold,
                    drifted,
                });
                if drifted {
                    reason = Some("drift");
                }
            }
        }
        if config.retrain_interval_days > 0 {
            if let Some(record) = self.store.model_record(active.version).await? {
                let due =
                    record.entry.trained_at + config.retrain_interval_days as i64 * MILLIS_PER_DAY;
                if self.clock.now() >= due {
                    reason = reason.or(Some("schedule"));
                }
            }
        }
        let Some(reason) = reason else {
            return Ok(());
        };
        let cooldown = Duration::from_secs(config.retrain_cooldown_s);
        if last_retrain.is_some_and(|t| t.elapsed() < cooldown) {
            return Ok(());
        }
        // Another instance may have just retrained on the same signal.
        let newest = self
            .store
            .list_models()
            .await?
            .iter()
            .filter(|m| m.entry.reason == "drift" || m.entry.reason == "schedule")
            .map(|m| m.entry.trained_at)
            .max();
        if newest.is_some_and(|t| self.clock.now() - t < cooldown.as_millis() as i64) {
            return Ok(());
        }
        *last_retrain = Some(Instant::now());
        let dataset = dataset_from_store(
            self.store.as_ref(),
            &self.scoring,
            self.scoring.training.window_days,
        )
        .await?;
        let result = train_and_register(
            self.store.as_ref(),
            &self.scoring,
            dataset,
            reason,
            Activation::IfNotWorse,
            Arc::new(NoProgress),
            self.clock.now(),
            true,
        )
        .await;
        match &result {
            Ok(registered) => self.metrics.emit(ModelRetrained {
                reason,
                version: registered.version,
                auc: registered.outcome.evaluation.model.roc_auc,
                previous: registered.previous.as_ref().map(|(v, m)| (*v, m.roc_auc)),
                activated: registered.activated,
            }),
            Err(error) => self.metrics.emit(ModelRetrainFailed { reason, error }),
        }
        result?;
        self.refresh().await
    }
}
