# The two commands of the README:
#   make lab    set up (first time only) and open the course in JupyterLab at chapter 00
#   make test   set up (first time only) and run every test: unit tests, doctests,
#               the model zoo trained from scratch, and every notebook under nbval
#
# TORCH_SPEC pins the torch build installed into the fresh environment. The default
# resolves to the local CPU wheel on the course machines and to the standard (CUDA on
# Linux, MPS on macOS) build from PyPI elsewhere. To reuse a torch already installed in
# the Python you run make with: `make lab VENV_FLAGS=--system-site-packages TORCH_SPEC=torch`.
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH_SPEC ?= torch==2.13.0
KERNEL_NAME := diffusion-course
LAB_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.course-installed
# Tests train what they test: a cache inside the checkout, never the home folder.
TEST_ENV := COURSE_CACHE_DIR=$(CURDIR)/.model_cache OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MPLBACKEND=Agg PYTHONHASHSEED=0

.PHONY: lab test setup unit zoo notebooks benchmark readme clean strip

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "Diffusion course (Python 3)" >/dev/null
	touch $(STAMP)

# make lab first starts one background build of the zoo (one torch thread), in the order the
# chapters first need the models, logging to zoo-build.log in the cache folder; a notebook that
# needs a model being built waits for it and shows the builder's progress (the zoo's file lock).
# A build already running is left alone; `make lab LAB_ZOO=0` skips it.
LAB_ZOO ?= 1
ZOO_CHAPTER_ORDER := digits_unet digit_classifier ddpm_moons ddpm_eight_gaussians digits_unet_ddpm1000 \
	fm_moons fm_eight_gaussians digits_unet_fm reflow_moons reflow_eight_gaussians reflow_digits distill_digits \
	cd_digits ct_moons shapes_vae shapes_classifier shapes_latent_unet shapes_pixel_unet \
	digits_cond_unet digits_noisy_classifier shapes_controlnet \
	digits_full_ft digits_lora_r1 digits_lora_r4 digits_lora_r16 digits_rslora_r4 digits_rslora_r16 \
	digits_lora_r4_prior digits_full_ft_prior digits_lora_r4_prior_inverted \
	shapes_clip shapes_text_unet shapes_ip_adapter shapes_ip_adapter_paper_drop shapes_vae_mse shapes_vae_gan

lab: setup
	$(BIN)/python -m course_lib.device
	@if [ "$(LAB_ZOO)" = 1 ]; then \
		dir=$$($(BIN)/python -c "from course_lib.zoo import cache_dir; print(cache_dir())") || exit 1; \
		if [ -f "$$dir/zoo-build.pid" ] && kill -0 "$$(cat "$$dir/zoo-build.pid")" 2>/dev/null; then \
			echo "zoo: a background build is already running (log: $$dir/zoo-build.log)"; \
		else \
			OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nohup $(BIN)/python -m course_lib.zoo build $(ZOO_CHAPTER_ORDER) \
				> "$$dir/zoo-build.log" 2>&1 & echo $$! > "$$dir/zoo-build.pid"; \
			echo "zoo: building the models in the background, in chapter order (log: $$dir/zoo-build.log)"; \
		fi; \
	fi
	$(BIN)/jupyter lab --notebook-dir=chapters $(LAB_ARGS) chapters/00_start_here.ipynb

unit: setup
	$(TEST_ENV) $(BIN)/python -m pytest -q -n 2 --dist loadfile tests course_lib --doctest-modules

# The models (and cached reference samples) the notebooks load, trained from scratch into the
# checkout's cache, in two parallel queues (one torch thread each).
# A child model (reflow, distillation, latent diffusion, LoRA) sits in its parent's queue, after it
# (shapes_pixel_unet is no child: its step count comes from the latent recipe's config, not its weights;
# distill_digits ends queue B to balance the two, long after queue A has built its parent reflow_digits;
# if a queue reaches a model the other is building, it waits for that file instead of training it again).
# Measured in a fresh clone (one thread per queue, 2 cores), 2026-12-04, with chapter 15: queue A 2,118 s, queue B
# 1,471 s (B idle for ten minutes); rebalanced here to about 1,770 s and 1,820 s (the toy models moved to A, the
# chapter-15 text U-Net and adapters to B, after shapes_vae; shapes_clip, their other parent, is A's first model).
# Chapter 17's two decoder fine-tunes (about 20 s and 30 s) end queue A, long after their parents shapes_vae (B) and
# shapes_clip (A) are built.
# `python -m course_lib.zoo build NAME ...` prints each model's training time.
ZOO_QUEUE_A := shapes_clip digits_unet_fm reflow_digits digits_cond_unet \
	digits_full_ft digits_lora_r1 digits_lora_r4 digits_lora_r16 digits_rslora_r4 digits_rslora_r16 \
	digits_lora_r4_prior digits_full_ft_prior digits_lora_r4_prior_inverted shapes_pixel_unet \
	ddpm_moons ddpm_eight_gaussians fm_moons reflow_moons fm_eight_gaussians reflow_eight_gaussians ct_moons \
	shapes_vae_mse shapes_vae_gan
ZOO_QUEUE_B := digits_unet digits_unet_ddpm1000 cd_digits shapes_classifier shapes_vae shapes_latent_unet shapes_controlnet \
	shapes_text_unet shapes_ip_adapter shapes_ip_adapter_paper_drop digits_noisy_classifier digit_classifier distill_digits

zoo: setup
	$(TEST_ENV) $(BIN)/python -m course_lib.zoo build $(ZOO_QUEUE_A) & pid=$$!; \
	$(TEST_ENV) $(BIN)/python -m course_lib.zoo build $(ZOO_QUEUE_B); rb=$$?; \
	wait $$pid; ra=$$?; test $$ra -eq 0 && test $$rb -eq 0

notebooks: setup
	NB=$$($(BIN)/python -m course_lib.manifest notebooks) || exit 1; \
	$(TEST_ENV) $(BIN)/python -m pytest -q -n 2 --dist loadfile -p no:cacheprovider \
		--nbval-lax --nbval-current-env --nbval-cell-timeout=900 $$NB

test: unit zoo notebooks

benchmark: setup
	$(TEST_ENV) $(BIN)/python benchmarks/run_benchmarks.py --write benchmarks/RESULTS.md

readme: setup
	$(BIN)/python -m course_lib.manifest readme --write README.md

strip: setup
	$(BIN)/nbstripout chapters/*.ipynb

clean:
	rm -rf $(VENV) .model_cache .pytest_cache
