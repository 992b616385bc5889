"""Accuracy you can trust: the metric and target (`metrics`), one trial of a float set (`trials`),
where trials run (`executors`, `worker`), sensitivity ranking and the fallback search (`search`),
and what `compile` does with the spec's `accuracy` section (`fallback`)."""
