"""Fakes shared by the tests: sample images, smoke-test models, loopback servers."""
