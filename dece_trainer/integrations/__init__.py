"""Optional integrations with other training libraries; each module imports its library on use."""
