"""Pure planning: checkpoint inventories, plans and errors. Imports nothing from hubsync.hub or hubsync.cli."""
