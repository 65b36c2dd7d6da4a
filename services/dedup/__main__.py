"""``python -m services.dedup``"""

from services.dedup.app import SERVICE, create_app
from shared.service import main
from shared.settings import PipelineSettings

if __name__ == "__main__":
    main(SERVICE, lambda env: PipelineSettings.from_env(env, SERVICE, default_port=18082), create_app)
