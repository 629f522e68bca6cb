"""The training run: config schema, flexi sampling and curricula, optimizer, losses, compiled steps and the loop."""
