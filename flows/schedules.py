"""When the flows run unless told otherwise.

`anomdet serve` and `flows.serve` read these; prefect.yaml, which cannot import Python,
repeats them in its `schedules:` anchors, and tests/flows/test_schedules.py holds the two
equal.
"""

#: Retraining: nightly, at 02:00.
RETRAIN_CRON = "0 2 * * *"
#: Scoring new records: hourly, at a quarter past.
SCORE_CRON = "15 * * * *"
#: Checking for new labels (flows/check.py): every ten minutes.
CHECK_CRON = "*/10 * * * *"
#: The IANA time zone the expressions are read in.
TIMEZONE = "UTC"
