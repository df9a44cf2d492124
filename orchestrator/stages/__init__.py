"""Work done once and cached by content hash (teachers, references), and the trial stage that
hands the engine its teacher. No Ray, no MLflow: the runtime schedules them, tracking logs."""
