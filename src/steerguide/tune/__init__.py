"""`steerguide tune`: choose w and ω (and ω's schedule) for one personalization from a budget of judged
probe images. Modules, imports pointing down: `cli` → `problems` → `tuner` → `plot`, `preset`, `probes`,
`stats` → `objective` → `search` (pure)."""
