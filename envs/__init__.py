"""Gymnasium environments over bp_rl (block-size decision per request). Built by the reward-table issue."""
