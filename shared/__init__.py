"""Code shared by every fleetreg service: settings, events, Kafka and database access, logging."""
