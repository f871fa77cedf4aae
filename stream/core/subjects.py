"""The record types agegate reads and writes, by full Avro name: what a decoded event is.

Pure names, no schemas: the pipeline dispatches on them without knowing any registry; the adapters
(stream/adapters/registry.py) map them to schemas and ids.
"""

SIGNUP = "agegate.events.SignupEvent"
UPLOAD = "agegate.events.UploadEvent"
FEEDBACK = "agegate.events.AgeFeedback"
DECISION = "agegate.decisions.PolicyDecision"
RETAINED_FRAME = "agegate.training.RetainedFrame"
SUBJECTS = (SIGNUP, UPLOAD, FEEDBACK, DECISION, RETAINED_FRAME)
