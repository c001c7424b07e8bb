"""Fused backends of the ops. Each module registers itself with ``aghmn_fast.ops`` on import."""
