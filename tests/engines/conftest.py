from tests.support.fixtures import model_repository, shapes_images  # noqa: F401
