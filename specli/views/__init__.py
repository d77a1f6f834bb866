"""Rich terminal views and HTML pages of events and bench results. Nothing here runs a
model: views read what the engine and bench produced."""
