"""``modules.api.api``: how ``/sdapi/v1/txt2img`` resolves and validates ``sampler_name`` / ``scheduler``."""
from modules import sd_samplers


class HTTPException(Exception):
    def __init__(self, status_code, detail):
        super().__init__(f"{status_code}: {detail}")
        self.status_code, self.detail = status_code, detail


def validate_sampler_name(name):
    config = sd_samplers.all_samplers_map.get(name, None)
    if config is None:
        raise HTTPException(status_code=400, detail="Sampler not found")
    return name


def resolve_txt2img_sampler(sampler_name, scheduler=None):
    """(sampler_name, scheduler) as ``text2imgapi`` populates the processing object."""
    sampler, found_scheduler = sd_samplers.get_sampler_and_scheduler(sampler_name, scheduler)
    name = validate_sampler_name(sampler)
    if not scheduler and found_scheduler != "Automatic":
        scheduler = found_scheduler
    return name, scheduler


def get_samplers():
    return [{"name": s[0], "aliases": s[2], "options": s[3]} for s in sd_samplers.all_samplers]
