@echo off
rem Create .venv in the repository root and install LoRA Studio into it.
rem NVIDIA driver present -> CUDA build of torch (+ bitsandbytes); otherwise the CPU build.
rem   setup.bat          install the app
rem   setup.bat --test   also install what the test suite needs
setlocal
cd /d "%~dp0"
set EXTRAS=
if "%~1"=="--test" set EXTRAS=test
if "%LORA_STUDIO_TORCH_VERSION%"=="" set LORA_STUDIO_TORCH_VERSION=2.13.0

if not exist ".venv\Scripts\python.exe" (
  where py >nul 2>nul && (py -3 -m venv .venv) || (python -m venv .venv)
  if errorlevel 1 (
    echo setup.bat: Python 3.10 or newer is required: https://www.python.org/downloads/
    exit /b 1
  )
)
set VPY=.venv\Scripts\python.exe
%VPY% -m pip install --quiet --upgrade pip setuptools wheel || exit /b 1

set GPU=0
nvidia-smi -L >nul 2>nul && set GPU=1
if "%GPU%"=="1" (
  echo NVIDIA driver found: installing CUDA torch
  %VPY% -m pip install torch==%LORA_STUDIO_TORCH_VERSION% --index-url https://download.pytorch.org/whl/cu128 --extra-index-url https://pypi.org/simple || exit /b 1
) else (
  echo No NVIDIA driver found: installing CPU torch
  %VPY% -m pip install torch==%LORA_STUDIO_TORCH_VERSION% || exit /b 1
)

set SPEC=.
if "%GPU%"=="1" (
  if "%EXTRAS%"=="" (set SPEC=.[cuda]) else (set SPEC=.[cuda,%EXTRAS%])
) else (
  if not "%EXTRAS%"=="" set SPEC=.[%EXTRAS%]
)
%VPY% -m pip install --quiet -e "%SPEC%" || exit /b 1
if "%GPU%"=="1" (
  rem xformers only where a wheel is built for this torch; without it PyTorch SDPA attention is used.
  %VPY% -m pip install --quiet xformers torch==%LORA_STUDIO_TORCH_VERSION% >nul 2>nul || echo No xformers wheel for torch %LORA_STUDIO_TORCH_VERSION%: PyTorch SDPA attention is used.
)
rem The WD14 tagger runs on ONNX Runtime: the CUDA build with an NVIDIA driver (never both builds at once).
set ORT=onnxruntime
set ORT_OTHER=onnxruntime-gpu
if "%GPU%"=="1" (
  set ORT=onnxruntime-gpu
  set ORT_OTHER=onnxruntime
)
%VPY% -m pip show --quiet %ORT% >nul 2>nul || (
  %VPY% -m pip uninstall --quiet -y %ORT_OTHER% >nul 2>nul
  %VPY% -m pip install --quiet "%ORT%>=1.20" || exit /b 1
)
%VPY% -m pip install --quiet --no-deps open-clip-torch==3.3.0 || exit /b 1
echo LoRA Studio is installed in %CD%\.venv
endlocal
