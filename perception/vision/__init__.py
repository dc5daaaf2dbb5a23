"""perception/vision"""
