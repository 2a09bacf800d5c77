"""Push campaigns, scheduling and delivery; arrives with the campaigns issue."""
