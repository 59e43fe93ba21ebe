"""marginface.align"""
