"""marginface.losses"""
