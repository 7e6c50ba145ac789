"""burst daemons: controller, workers and what they share."""
