"""The command-line front door: ``dece-trainer`` / ``python -m dece_trainer``."""
