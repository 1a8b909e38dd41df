@echo off
rem Open LoRA Studio in the browser; sets itself up (.venv) on first use.
cd /d "%~dp0"
if not exist ".venv\Scripts\lora-studio.exe" (
  call setup.bat || exit /b 1
)
".venv\Scripts\lora-studio.exe" gui %*
