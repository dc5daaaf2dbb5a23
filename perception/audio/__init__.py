"""perception/audio"""
